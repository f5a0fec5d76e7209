"""Checks the workflow runs before scheduling any job (mpq/preflight.py): each mistake a stage would
otherwise find after Snakemake deleted its outputs fails here with one line naming key and fix."""
import importlib.util
from pathlib import Path

import pytest
import torch
import yaml

from mpq.config import ConfigError, validate_config
from mpq.preflight import check_budgets, check_dataset, check_device, check_loader, check_weights, preflight

REPO = Path(__file__).resolve().parents[2]
SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
BASE = {"experiment": "t", "dataset": {"name": "digits", "image_size": 16}, "model": {"arch": "resnet8", "num_classes": 10},
        "quant": {"candidates": [4, 3, 2]},
        "finetune": {"lsq": {"epochs": 1}}, "policies": {"u": {"search": "uniform", "bits": [4, 4], "finetune": "lsq"}}}


def config(**sections):
    return validate_config({**BASE, **sections}, SCHEMA)


def error_of(check, cfg) -> str:
    with pytest.raises(ConfigError) as e:
        check(cfg)
    message = str(e.value)
    assert "\n" not in message and message.startswith("config error: ")
    return message


def image_folder(root: Path, train_classes, test_classes=None, split="val"):
    for split_name, classes in (("train", train_classes), (split, test_classes or train_classes)):
        for c in classes:
            (root / split_name / c).mkdir(parents=True)
            (root / split_name / c / "0.jpg").write_bytes(b"")
    return root


def test_the_default_config_passes():
    preflight(validate_config(yaml.safe_load((REPO / "config/config.yaml").read_text()), SCHEMA))


def test_class_count_of_a_builtin_dataset():
    msg = error_of(check_dataset, config(model={"arch": "resnet8", "num_classes": 5}))
    assert "model.num_classes is 5" in msg and "set model.num_classes: 10" in msg


def test_class_count_of_an_image_folder_is_read_from_its_folders(tmp_path):
    root = image_folder(tmp_path / "d", ["a", "b", "c"])
    check_dataset(config(dataset={"name": "imagefolder", "root": str(root)}, model={"arch": "resnet8", "num_classes": 3}))
    msg = error_of(check_dataset, config(dataset={"name": "imagefolder", "root": str(root)}))
    assert "has 3 classes" in msg and "set model.num_classes: 3" in msg


@pytest.mark.parametrize("layout, phrase", [
    (None, "does not exist"),
    ("no-val", "no val/ or test/ folder"),
    ("one-class", "one class folder"),
    ("differ", "class folders differ"),
])
def test_bad_image_folder_roots(tmp_path, layout, phrase):
    root = tmp_path / "d"
    if layout == "no-val":
        (root / "train" / "a").mkdir(parents=True)
    elif layout == "one-class":
        image_folder(root, ["a"])
    elif layout == "differ":
        image_folder(root, ["a", "b"], ["a", "c"], split="test")
    msg = error_of(check_dataset, config(dataset={"name": "imagefolder", "root": str(root)}))
    assert phrase in msg and "dataset.root" in msg


def test_cifar_without_download_needs_its_files(tmp_path):
    msg = error_of(check_dataset, config(dataset={"name": "cifar10", "root": str(tmp_path / "none"), "download": False}))
    assert "set download: true" in msg
    check_dataset(config(dataset={"name": "cifar10", "root": str(tmp_path / "none")}))   # downloads there


def test_cifar_as_an_image_folder_counts_its_folders(tmp_path):
    root = image_folder(tmp_path / "d", [str(i) for i in range(10)], split="test")
    check_dataset(config(dataset={"name": "cifar10", "root": str(root)}))
    assert "has 10 classes" in error_of(check_dataset, config(dataset={"name": "cifar100", "root": str(root)},
                                                                model={"arch": "resnet8", "num_classes": 100}))


def test_weights_file_must_exist(tmp_path):
    msg = error_of(check_weights, config(pretrain={"weights": str(tmp_path / "missing.pth")}))
    assert "pretrain.weights: no such file" in msg and "missing.pth" in msg
    check_weights(config(pretrain={"weights": "ResNet18_Weights.IMAGENET1K_V1"}))   # downloaded by the stage
    (tmp_path / "w.pth").write_bytes(b"x")
    check_weights(config(pretrain={"weights": str(tmp_path / "w.pth")}))


def test_dali_loader_needs_dali():
    cfg = config(dataset={"name": "digits", "image_size": 16, "loader": "dali"})
    if importlib.util.find_spec("nvidia.dali") is None:
        assert "pip install nvidia-dali-cuda120" in error_of(check_loader, cfg)
    else:
        check_loader(cfg)


def test_cuda_device_needs_a_gpu_unless_jobs_run_elsewhere():
    cfg = config(device="cuda")
    if torch.cuda.is_available():
        check_device(cfg)
        return
    assert "torch sees no CUDA GPU" in error_of(check_device, cfg)
    preflight(cfg, local_jobs=False)   # a cluster's login node: the GPU nodes are checked by their jobs


def budget_policy(search, budget, importance):
    return {"p": {"search": search, "importance": importance, "budget": budget, "finetune": "lsq"}}


@pytest.mark.parametrize("search, importance", [("ilp", "limpq"), ("greedy", "rfquant")])
def test_a_budget_below_the_lowest_candidates_fails_at_config_load(search, importance):
    cfg = config(quant={"candidates": [4]}, policies=budget_policy(search, {"bitops": "w3a3"}, importance))
    msg = error_of(check_budgets, cfg)
    assert "policies.p.budget" in msg and "every layer at 4 bits needs" in msg and "quant.candidates" in msg
    check_budgets(config(quant={"candidates": [4, 3]}, policies=budget_policy(search, {"bitops": "w3a3"}, importance)))


def test_a_size_budget_below_the_lowest_candidates_fails_at_config_load():
    cfg = config(quant={"candidates": [6, 5]}, policies=budget_policy("ilp", {"size_mb": 0.01}, "limpq"))
    assert "every layer at 5-bit weights needs" in error_of(check_budgets, cfg)


def test_greedy_with_a_size_budget_fails_at_validation():
    with pytest.raises(ConfigError, match="search 'greedy' meets bitops or bitops_g or accuracy_drop only, not size_mb; use search ilp, ompq"):
        config(policies=budget_policy("greedy", {"size_mb": 0.03}, "rfquant"))


def test_planning_for_another_machine_skips_only_its_checks(monkeypatch, tmp_path):
    monkeypatch.setenv("MPQ_SKIP_MACHINE_CHECKS", "1")
    cfg = config(dataset={"name": "imagefolder", "root": str(tmp_path / "elsewhere")}, device="cuda")
    assert preflight(cfg) == ["MPQ_SKIP_MACHINE_CHECKS=1: data, weights, DALI and CUDA are not checked on this machine"]
    with pytest.raises(ConfigError, match="cannot be reached"):   # the architecture is the same everywhere
        preflight(config(quant={"candidates": [4]}, policies=budget_policy("ilp", {"bitops": "w3a3"}, "limpq")))
