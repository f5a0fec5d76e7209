"""Between-workflow caching: a second workflow with the same pretrain config reuses the cached FP32
model (`snakemake --cache`, rule `cache: "omit-software"`) instead of training it again."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIG = yaml.safe_load((REPO / ".test/config-cache/config.yaml").read_text())
TARGET = "results/tiny/pretrain/model.pt"

pytestmark = pytest.mark.integration


def run(workdir: Path, cache: Path) -> subprocess.CompletedProcess:
    (workdir / "config").mkdir(parents=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    env = {**os.environ, "SNAKEMAKE_OUTPUT_CACHE": str(cache)}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                           str(workdir), "--cores", "1", "--cache", "--", TARGET],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def test_second_workflow_reuses_the_cached_fp32_model(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    first, second = tmp_path / "first", tmp_path / "second"
    run(first, cache)
    assert "pretrain epoch 1/1" in (first / "results/tiny/logs/pretrain.log").read_text(), "the first trains"
    assert any(cache.iterdir()), "the FP32 model is stored in SNAKEMAKE_OUTPUT_CACHE"
    out = run(second, cache)
    said = out.stdout + out.stderr
    assert "model.pt from cache" in said, said
    log = second / "results/tiny/logs/pretrain.log"   # Snakemake may create it, but nothing trained
    assert not log.exists() or "pretrain epoch" not in log.read_text(), "pretraining ran again"
    model = second / TARGET
    assert model.is_file()
    assert model.read_bytes() == (first / TARGET).read_bytes()
    assert (second / "results/tiny/pretrain/metrics.json").read_bytes() == \
        (first / "results/tiny/pretrain/metrics.json").read_bytes()
