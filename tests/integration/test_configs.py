"""The shipped CIFAR-10 (GPU, CPU, fidelity) and ImageNet configs pass the schema and dry-run without touching data."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mpq.config import spec_missing_keys

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration
# The shipped configs are meant for machines with their data (and GPUs): plan them here without it.
OTHER_MACHINE = {**os.environ, "MPQ_SKIP_MACHINE_CHECKS": "1"}


@pytest.mark.parametrize("name", ["cifar10", "cifar10-cpu", "fidelity-cifar10", "imagenet"])
def test_config_validates_against_the_schema(name):
    import jsonschema

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    config = yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["dataset"]["root"] and not Path(config["dataset"]["root"]).is_absolute()


@pytest.mark.parametrize("name,arch,loader", [("cifar10", "resnet20", "auto"), ("cifar10-cpu", "resnet20", "auto"),
                                              ("fidelity-cifar10", "resnet20", "auto"),
                                              ("imagenet", "resnet18", "dali")])
def test_config_dry_runs(tmp_path, name, arch, loader):
    """A dry run in an empty directory: the dataset root does not exist, so nothing reads data."""
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                           str(tmp_path), "-n", "-p", "--replace-workflow-config", "--configfile",
                           str(REPO / "config" / f"{name}.yaml")], capture_output=True, text=True, timeout=120, env=OTHER_MACHINE)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    config = yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text())
    table = proc.stdout.split("Job stats:", 1)[1]
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M))
    assert int(jobs["evaluate"]) == len(config["policies"]) and int(jobs["pretrain"]) == 1
    assert f'"arch":"{arch}"' in proc.stdout and f'"loader":"{loader}"' in proc.stdout
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()
    # Stages fill in no defaults: every config section a job's spec carries is resolved whole.
    specs = [json.loads(text) for text in re.findall(r"\$MPQ_RUN_\w+ --spec '(\{.*?\})'", proc.stdout)]
    assert len(specs) >= int(jobs["total"]) // 2 and all(spec_missing_keys(s) == [] for s in specs)
    if name == "imagenet":   # 4 GPUs per training job: launched under torchrun
        assert "rule pretrain starts under python -m torch.distributed.run --standalone --nproc_per_node=4" in proc.stderr


def test_recipe_comparison_config_validates_and_plans_every_recipe():
    from mpq.config import validate_config

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    config = validate_config(yaml.safe_load((REPO / "config/recipes.yaml").read_text()), schema)
    used = {p["finetune"] for p in config["policies"].values()}
    assert used == {"lsq", "lsq-dampen", "lsq-freeze", "n2uq", "lsq-kd"}


def test_fidelity_config_runs_the_method_matrix_from_one_schedule():
    """Issue 14's matrix: one FP32 model, one QAT schedule, OMPQ PTQ at the uniform PTQ's size."""
    from mpq import models
    from mpq.config import validate_config
    from mpq.cost import CostModel

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    config = validate_config(yaml.safe_load((REPO / "config/fidelity-cifar10.yaml").read_text()), schema)
    policies, recipes = config["policies"], config["finetune"]
    assert config["pretrain"]["weights"].endswith("resnet20-cifar10-published.th")
    assert {p["finetune"] for p in policies.values()} == {"lsq", "lsq-dampen", "lsq-freeze", "n2uq", "lsq-kd",
                                                          "ptq", "ptq-long", "none"}
    qat = [recipes[p["finetune"]] for p in policies.values() if p["finetune"] not in ("ptq", "ptq-long", "none")]
    schedule = {k: {(r[k] if k in r else None) for r in qat} for k in
                ("epochs", "lr", "data_fraction", "weight_decay", "label_smoothing", "bn_recalibration_images")}
    assert all(len(values) == 1 for values in schedule.values()), schedule
    assert [p["bits"] for n, p in policies.items() if n.startswith("w2a2-")] == [[2, 2]] * 5
    act_bits = config["importance"]["ompq"].get("act_bits", 8)
    ptq_uniform = [p for p in policies.values() if p["finetune"] == "ptq" and p["search"] == "uniform"
                   and p["bits"][1] == act_bits]
    ompq_ptq = [p for p in policies.values() if p["finetune"] == "ptq" and p["search"] == "ompq"]
    assert len(ptq_uniform) == 1 and len(ompq_ptq) == 2 and {p["mode"] for p in ompq_ptq} == {"ptq"}
    assert {p.get("beta") for p in ompq_ptq} == {None, 100.0}, "the default beta and the reference's"
    assert len({p["budget"]["size_mb"] for p in ompq_ptq}) == 1
    # Section 3: the W4A4 QAT row has a calibration-only W4A4 row to keep or beat.
    assert policies["uniform-w4a4-ptq"] == {**policies["uniform-w4a4"], "finetune": "ptq"}
    assert policies["uniform-w4a4-ptq-long"] == {**policies["uniform-w4a4"], "finetune": "ptq-long"}
    # C4 again with the longer reconstruction on both sides.
    for name in ("ompq-ptq", "uniform-w3a8-ptq"):
        assert policies[f"{name}-long"] == {**policies[name], "finetune": "ptq-long"}
    assert {k: v for k, v in recipes["ptq-long"].items() if not k.startswith("iters")} == \
        {k: v for k, v in recipes["ptq"].items() if not k.startswith("iters")}   # only longer
    cost = CostModel.from_model(models.create("resnet20", num_classes=10), 32)
    w, a = ptq_uniform[0]["bits"]
    assert a == config["importance"]["ompq"].get("act_bits", 8)   # the same activation bits
    assert ompq_ptq[0]["budget"]["size_mb"] == pytest.approx(cost.size_mib([w] * len(cost.names)), abs=1e-4)
