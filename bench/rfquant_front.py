"""A retraining-free RFQuant front both ways: one `rfquant_front` job against three jobs per point.

On the digits default (config/config.yaml: its FP32 model and supernet), a `points`-point sweep
`bitops: {sweep: [w2a3, w6a6], points: N}` with `finetune: none` is made twice from the same
supernet: once as one job (the default, `front_job: true`) and once with `front_job: false`
(search, subnet and evaluate per point). Both runs start after the supernet is made, in copies of
one work folder, so they differ only in how the front is made; the table prints their wall times,
job counts, the ratio, and whether the first point (the largest budget, searched first either way)
has the same metrics both ways.

    .venv/bin/python bench/rfquant_front.py [--points 10] [--workdir /tmp/mpq-front-bench]
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", "2"]


def config(points: int, front_job: bool) -> dict:
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    cfg["policies"] = {"rf": {"search": "greedy", "importance": "rfquant", "finetune": "none",
                              "budget": {"bitops": {"sweep": ["w2a3", "w6a6"], "points": points}},
                              "front_job": front_job}}
    return cfg


def run(workdir: Path, *targets: str) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), *targets], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"snakemake failed in {workdir}:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start, proc.stderr


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=10)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/mpq-front-bench"))
    args = ap.parse_args(argv)
    base = args.workdir / "base"
    (base / "config").mkdir(parents=True, exist_ok=True)
    (base / "config/config.yaml").write_text(yaml.safe_dump(config(args.points, True), sort_keys=False))
    setup, _ = run(base, f"results/{config(1, True)['experiment']}/rfquant/supernet.pt")
    print(f"FP32 model and supernet (shared, not compared): {setup:.1f} s")
    rows, firsts = [], []
    for front_job in (True, False):
        work = args.workdir / ("one-job" if front_job else "per-point")
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(base, work, symlinks=True)
        cfg = config(args.points, front_job)
        (work / "config/config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        res = f"results/{cfg['experiment']}"
        names = [f"rf-f{t}" for t in ("0", "1")]
        metrics = [f"{res}/policies/rf-f{format(k / (args.points - 1), '.4g')}/metrics.json"
                   for k in range(args.points)]
        seconds, log = run(work, *metrics)
        jobs = len(re.findall(r"^Finished jobid", log, re.M))
        rows.append((front_job, seconds, jobs))
        firsts.append(json.loads((work / f"{res}/policies/{names[1]}/metrics.json").read_text()))
    one, per = rows
    print(f"{'front':<34} {'wall s':>8} {'jobs':>5}")
    print(f"{'one rfquant_front job':<34} {one[1]:>8.1f} {one[2]:>5}")
    print(f"{'search + subnet + evaluate per point':<34} {per[1]:>8.1f} {per[2]:>5}")
    print(f"{args.points} points: one job is {per[1] / one[1]:.1f}x faster; the largest budget's metrics "
          f"{'agree' if firsts[0] == firsts[1] else 'DIFFER'} both ways "
          f"(top-1 {firsts[0]['top1']:.2f} / {firsts[1]['top1']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
