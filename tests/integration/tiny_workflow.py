"""The tiny digits workflow the integration tests share: its config, and how they call Snakemake.

`finished_run` (tests/integration/conftest.py) runs it once per test session.
"""
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]

TINY = yaml.safe_load((REPO / ".test/config-tiny/config.yaml").read_text())
FRONT_POINTS = ("rfquant-front-w3a3", "rfquant-front-w5a5")   # the sweep `rfquant-front`
QUANTIZED = ("uniform-w4a4", "limpq-w3a3", "limpq-size", "rfquant-w4a4", *FRONT_POINTS, "ompq-ptq", "w3a3-dampen")


def snakemake(workdir: Path, *args, check=True):
    proc = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), "--cores", "2", *args],
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def write_config(workdir: Path, cfg: dict) -> None:
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def planned_jobs(workdir: Path) -> dict:
    """Rule -> job count of a dry run."""
    return job_counts(snakemake(workdir, "-n").stdout)


def job_counts(out: str) -> dict:
    """Rule -> job count of a dry run's output."""
    counts = {}
    table = out.split("Job stats:", 1)[1] if "Job stats:" in out else ""
    for line in table.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts
