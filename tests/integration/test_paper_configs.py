"""The paper configs (config/papers/*.yaml): schema, dry runs without data, and a smoke run of each.

The smoke runs use config/papers/smoke.yaml as a second --configfile (CPU, 32 px, 3 classes, one
epoch, pretrain.weights null) on a generated ImageFolder of 3 classes x 4 JPEGs per split. To keep
the file within a few minutes on 2 cores, each smoke run asks for the metrics of one policy per
distinct (search, importance, finetune method, oscillation) signature of its config.
"""
import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PAPERS = REPO / "config" / "papers"
SMOKE = PAPERS / "smoke.yaml"
CONFIGS = sorted(p.stem for p in PAPERS.glob("*.yaml") if p.stem != "smoke")
SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())

pytestmark = pytest.mark.integration


def load(name: str) -> dict:
    return yaml.safe_load((PAPERS / f"{name}.yaml").read_text())


def deep_merge(base: dict, extra: dict) -> dict:
    """Snakemake's merge of a second --configfile."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def snakemake(workdir: Path, name: str, *args, root: Path, smoke: bool, timeout: int = 600, env=None):
    files = [str(PAPERS / f"{name}.yaml")] + ([str(SMOKE)] if smoke else [])
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", *args,   # targets before --configfile/--config, which take several values
           "--replace-workflow-config", "--configfile", *files, "--config", f"dataset={{root: '{root}'}}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def _fail(proc, workdir: Path) -> str:
    logs = sorted((workdir / "results").glob("*/logs/**/*.log")) if (workdir / "results").exists() else []
    tails = "".join(f"\n--- {p.relative_to(workdir)}\n" + p.read_text()[-1500:] for p in logs[-3:])
    return f"rc={proc.returncode}\n{proc.stdout[-2500:]}\n{proc.stderr[-3000:]}{tails}"


@pytest.fixture(scope="module")
def tiny_imagefolder(tmp_path_factory):
    """train/ and val/ with 3 classes x 4 JPEGs (48 px, class-dependent brightness)."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("tiny_imagenet")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(3):
            folder = root / split / f"n0000000{c}"
            folder.mkdir(parents=True)
            for i in range(4):
                pixels = (rng.random((48, 48, 3)) * 80 + 80 * c).astype("uint8")
                Image.fromarray(pixels).save(folder / f"{split}_{c}_{i}.JPEG", quality=90)
    return root


def test_every_recipe_has_a_config():
    assert set(CONFIGS) >= {"limpq_resnet50", "limpq_resnet18", "rfquant_resnet18", "rfquant_mobilenetv2",
                            "ompq_resnet18_qat", "ompq_mobilenetv2_ptq", "oscillations_mobilenetv2",
                            "n2uq_resnet18"}
    readme = (PAPERS / "README.md").read_text()
    for name in CONFIGS:
        assert f"config/papers/{name}.yaml" in readme, f"{name} is not in config/papers/README.md"


@pytest.mark.parametrize("name", CONFIGS)
def test_paper_config_is_a_complete_imagenet_config(name):
    import torchvision

    from mpq.config import validate_config

    cfg = validate_config(load(name), SCHEMA)
    smoke = validate_config(deep_merge(load(name), yaml.safe_load(SMOKE.read_text())), SCHEMA)
    assert smoke["device"] == "cpu" and smoke["pretrain"]["weights"] is None
    assert cfg["experiment"].startswith("paper-")
    ds = cfg["dataset"]
    assert (ds["name"], ds["image_size"], ds["loader"]) == ("imagefolder", 224, "dali")
    assert cfg["model"]["num_classes"] == 1000 and cfg["device"] == "cuda"
    weights = cfg["pretrain"]["weights"]
    enum = torchvision.models.get_model_weights(cfg["model"]["arch"])
    assert type(torchvision.models.get_weight(weights)) is enum, weights   # a real name, for this arch


@pytest.mark.parametrize("name", CONFIGS)
def test_paper_config_dry_runs_without_data(tmp_path, name):
    """The whole DAG resolves; nothing reads the (absent) data root."""
    root = tmp_path / "no-imagenet-here"
    proc = snakemake(tmp_path, name, "-n", "-p", root=root, smoke=False, timeout=180,
                     env={**os.environ, "MPQ_SKIP_MACHINE_CHECKS": "1"})   # ImageNet lives elsewhere
    assert proc.returncode == 0, _fail(proc, tmp_path)
    cfg = load(name)
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout.split("Job stats:", 1)[1], flags=re.M))
    assert int(jobs["evaluate"]) == len(cfg["policies"]) and int(jobs["pretrain"]) == 1
    assert f'"weights":"{cfg["pretrain"]["weights"]}"' in proc.stdout
    assert f'"root":"{root}"' in proc.stdout
    assert not root.exists() and not (tmp_path / "results").exists()


def smoke_policies(cfg: dict) -> list[str]:
    """One policy per distinct (search, importance, finetune method, oscillation)."""
    seen, chosen = set(), []
    for name, pol in cfg["policies"].items():
        recipe = cfg.get("finetune", {}).get(pol.get("finetune", "none"), {})
        key = (pol["search"], pol.get("importance"), recipe.get("method", "lsq"), recipe.get("oscillation"),
               pol.get("mode"))
        if key not in seen:
            seen.add(key)
            chosen.append(name)
    return chosen


@pytest.mark.parametrize("name", CONFIGS)
def test_paper_config_smoke_run(tmp_path, tiny_imagefolder, name):
    cfg = load(name)
    exp = cfg["experiment"]
    policies = smoke_policies(cfg)
    targets = [f"results/{exp}/policies/{p}/metrics.json" for p in policies]
    proc = snakemake(tmp_path, name, *targets, root=tiny_imagefolder, smoke=True)
    assert proc.returncode == 0, _fail(proc, tmp_path)
    fp32 = json.loads((tmp_path / f"results/{exp}/pretrain/metrics.json").read_text())
    assert fp32["image_size"] == 32 and fp32["epochs"] == 1
    for policy in policies:
        metrics = json.loads((tmp_path / f"results/{exp}/policies/{policy}/metrics.json").read_text())
        assert 0.0 <= metrics["top1"] <= 100.0, (policy, metrics)
        doc = yaml.safe_load((tmp_path / f"results/{exp}/policies/{policy}/policy.yaml").read_text())
        assert (doc["model"]["arch"], doc["model"]["num_classes"]) == (cfg["model"]["arch"], 3)
