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

TINY = {
    "experiment": "tiny",
    "seed": 0,
    "device": "cpu",
    "dataset": {"name": "digits", "image_size": 16, "batch_size": 128},
    "model": {"arch": "resnet8", "num_classes": 10},
    "pretrain": {"epochs": 6, "lr": 0.1},
    "quant": {"candidates": [6, 5, 4, 3, 2]},
    "importance": {"limpq": {"epochs": 1, "fixed_layers_during_indicators": "fp"},
                   "rfquant": {"epochs": 1, "warmup_epochs": 0, "ema_decay": 0.5, "bn_calibration_images": 256,
                               "sched_start": 0, "sched_period": 1},
                   "ompq": {"samples": 16}},
    "search": {"greedy": {"batch_size": 64}},
    "policies": {
        "uniform-w4a4": {"search": "uniform", "bits": [4, 4], "finetune": "lsq"},
        "limpq-w3a3": {"search": "ilp", "importance": "limpq", "budget": {"bitops": "w3a3"}, "finetune": "lsq"},
        "limpq-size": {"search": "ilp", "importance": "limpq", "budget": {"size_mb": 0.022}, "finetune": "lsq"},
        "rfquant-w4a4": {"search": "greedy", "importance": "rfquant", "budget": {"bitops": "w4a4"},
                         "finetune": "none"},
        "ompq-ptq": {"search": "ompq", "importance": "ompq", "mode": "ptq", "budget": {"size_mb": 0.0274},
                     "finetune": "ptq"},
        "w3a3-dampen": {"search": "uniform", "bits": [3, 3], "finetune": "lsq-dampen"},
    },
    "finetune": {"lsq": {"epochs": 1, "lr": 0.01, "bn_recalibration_images": 512},
                 "lsq-dampen": {"epochs": 1, "lr": 0.01, "bn_recalibration_images": 512, "oscillation": "dampen"},
                 "ptq": {"method": "ptq", "calib_images": 64, "iters_w": 10, "iters_a": 5}},
}
QUANTIZED = ("uniform-w4a4", "limpq-w3a3", "limpq-size", "rfquant-w4a4", "ompq-ptq", "w3a3-dampen")


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
    out = snakemake(workdir, "-n").stdout
    counts = {}
    table = out.split("Job stats:", 1)[1] if "Job stats:" in out else ""
    for line in table.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts
