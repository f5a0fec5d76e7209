"""The workflow end to end on the embedded digits dataset (tiny epochs), plus dry-run rerun rules."""
import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
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
    "importance": {"limpq": {"epochs": 1, "fixed_layers_during_indicators": "fp"}},
    "policies": {
        "uniform-w4a4": {"search": "uniform", "bits": [4, 4], "finetune": "lsq"},
        "limpq-w3a3": {"search": "ilp", "importance": "limpq", "budget": {"bitops": "w3a3"}, "finetune": "lsq"},
        "limpq-size": {"search": "ilp", "importance": "limpq", "budget": {"size_mb": 0.022}, "finetune": "lsq"},
    },
    "finetune": {"lsq": {"epochs": 1, "lr": 0.01, "bn_recalibration_images": 512}},
}

pytestmark = pytest.mark.integration


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


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("wf")
    write_config(workdir, TINY)
    snakemake(workdir)
    return workdir


def test_summary_has_fp32_and_every_policy(finished_run):
    rows = list(csv.DictReader(open(finished_run / "results/tiny/summary.csv")))
    by_name = {r["policy"]: r for r in rows}
    assert set(by_name) == {"fp32", "uniform-w4a4", "limpq-w3a3", "limpq-size"}
    fp32 = by_name["fp32"]
    assert float(fp32["top1"]) > 80.0, "six epochs of FP32 training on digits should exceed 80%"
    for name in ("uniform-w4a4", "limpq-w3a3", "limpq-size"):
        r = by_name[name]
        assert 0 < float(r["bitops_g"]) < float(fp32["bitops_g"])
        assert 0 < float(r["size_mb"]) < float(fp32["size_mb"])
        assert float(r["top1"]) > 30.0
    pol = yaml.safe_load(open(finished_run / "results/tiny/policies/limpq-w3a3/policy.yaml"))
    assert pol["achieved"]["bitops_g"] <= pol["budget"]["bitops_g"] + 1e-9
    assert pol["search"]["method"] == "ilp" and pol["search"]["status"].lower() == "optimal"
    size_pol = yaml.safe_load(open(finished_run / "results/tiny/policies/limpq-size/policy.yaml"))
    assert size_pol["achieved"]["size_mb"] <= 0.022 + 1e-9
    for log in ("pretrain.log", "train_indicators.log", "finetune/limpq-w3a3.log"):
        assert "epoch 1/" in (finished_run / "results/tiny/logs" / log).read_text(), log


def test_nothing_to_do_after_a_complete_run(finished_run):
    assert planned_jobs(finished_run) == {}


def test_changing_one_budget_reruns_only_that_policy(finished_run, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(finished_run, workdir, symlinks=True)
    cfg = yaml.safe_load((workdir / "config/config.yaml").read_text())
    cfg["policies"]["limpq-w3a3"]["budget"] = {"bitops": "w4a3"}
    write_config(workdir, cfg)
    jobs = planned_jobs(workdir)
    assert jobs == {"search": 1, "finetune": 1, "evaluate": 1, "summarize": 1, "all": 1}, jobs
    plan = snakemake(workdir, "-n").stdout
    assert "results/tiny/policies/limpq-w3a3/policy.yaml" in plan
    assert "results/tiny/policies/limpq-size/policy.yaml" not in plan


def test_changing_a_finetune_recipe_never_reruns_pretrain_or_search(finished_run, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(finished_run, workdir, symlinks=True)
    cfg = yaml.safe_load((workdir / "config/config.yaml").read_text())
    cfg["finetune"]["lsq"]["epochs"] = 2
    write_config(workdir, cfg)
    jobs = planned_jobs(workdir)
    assert jobs == {"finetune": 3, "evaluate": 3, "summarize": 1, "all": 1}, jobs


def test_bad_config_key_fails_with_one_line(tmp_path):
    cfg = {**TINY, "policies": {"p": {"search": "uniform", "bits": [4, 4], "budgte": 1}}}
    write_config(tmp_path, cfg)
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "config error" in ln]
    assert lines == ["config error: unknown key policies.p.budgte; allowed here: alpha, avg_bits, bits, budget, "
                     "finetune, importance, search, solver"]
    assert not (tmp_path / "results").exists()


def test_bad_config_type_names_the_key(tmp_path):
    cfg = {**TINY, "pretrain": {"epochs": "many"}}
    write_config(tmp_path, cfg)
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    assert "config error: pretrain.epochs: 'many' is not of type 'integer'" in proc.stdout + proc.stderr
