"""Start-up of every stage: `python stages/<stage>.py --help` beside `python -c "import torch"`.

Most of a small job's wall time is start-up (the interpreter, torch, the library), so each stage's
`--help` should cost little more than importing torch (goal: <= 1.2x). The commands run
interleaved, `--repeats` rounds of all of them, so load on a shared machine touches each alike;
the table prints the median seconds and the ratio of medians.

    .venv/bin/python bench/startup.py [--repeats 5] [--stages search evaluate]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINE = "import torch"
REFERENCES = {"import torch": [sys.executable, "-c", "import torch"],
              "import torchvision": [sys.executable, "-c", "import torchvision"]}


def seconds(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--stages", nargs="*", help="stage names (default: every script in stages/)")
    args = ap.parse_args(argv)
    stages = args.stages or sorted(p.stem for p in (REPO / "stages").glob("*.py"))
    commands = {**REFERENCES, **{f"{s} --help": [sys.executable, f"stages/{s}.py", "--help"] for s in stages}}
    times = {name: [] for name in commands}
    for _ in range(args.repeats):
        for name, cmd in commands.items():
            times[name].append(seconds(cmd))
    base = statistics.median(times[BASELINE])
    print(f"{'command':<28} {'median s':>9} {'min s':>7} {'x import torch':>15}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<28} {median:>9.2f} {min(values):>7.2f} {median / base:>15.2f}")
    worst = max((n for n in times if n.endswith("--help")), key=lambda n: statistics.median(times[n]))
    print(f"slowest stage: {worst}, {statistics.median(times[worst]) / base:.2f}x import torch "
          f"({args.repeats} interleaved rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
