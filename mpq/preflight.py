"""Checks at config load that need the file system, the hardware or the architecture.

A mistake that only a stage detects costs the results it would replace: Snakemake deletes a job's
outputs before the job runs, so a wrong class count or data path would delete the FP32 model (a
day of GPU time on ImageNet) before the stage fails, and uniform searches would already have
rewritten their policies. Everything decidable without training is therefore checked here, by
the workflow before it schedules any job, each failure one line naming the key and the fix.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .config import ConfigError

# Class counts of the built-in datasets (an ImageFolder copy of CIFAR is counted from its folders).
BUILTIN_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100}


def _fail(message: str) -> None:
    raise ConfigError(f"config error: {message}")


def dataset_class_count(dataset: dict) -> int:
    """The number of classes the configured data has, read from folder names, not images."""
    from .data.imagefolder import class_folders, is_image_folder

    name = dataset["name"]
    root = dataset.get("root")
    if name == "synthetic":
        return int(dataset["num_classes"])
    if name == "imagefolder" or (name in ("cifar10", "cifar100") and root and is_image_folder(root)):
        if not root:
            _fail("dataset.root: an imagefolder dataset needs root (a folder with train/ and val/ or test/)")
        try:
            classes = class_folders(root)[2]
        except ValueError as e:
            _fail(f"dataset.root: {e}")
        return len(classes)
    if name in ("cifar10", "cifar100") and not dataset.get("download", True) \
            and not (root and Path(root).expanduser().is_dir()):
        _fail(f"dataset.root: {root} does not exist and dataset.download is false; set download: true "
              f"or point root at the {name} files")
    return BUILTIN_CLASSES[name]


def check_dataset(cfg: dict) -> None:
    classes = dataset_class_count(cfg["dataset"])
    if cfg["model"]["num_classes"] != classes:
        _fail(f"model.num_classes is {cfg['model']['num_classes']} but dataset {cfg['dataset']['name']!r} has "
              f"{classes} classes; set model.num_classes: {classes}")


def check_device(cfg: dict) -> None:
    """`device: cuda` needs a GPU here (call only where the jobs run on this machine)."""
    if cfg["device"] != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        _fail("device is cuda but torch sees no CUDA GPU on this machine (torch.cuda.is_available() is "
              "False); set device: cpu, or run on a GPU node")


def check_loader(cfg: dict) -> None:
    if cfg["dataset"].get("loader") == "dali" and importlib.util.find_spec("nvidia.dali") is None:
        _fail("dataset.loader is dali but NVIDIA DALI is not installed; pip install nvidia-dali-cuda120, "
              "or set dataset.loader: auto")


def check_weights(cfg: dict) -> None:
    from .train.pretrained import is_torchvision_name

    weights = (cfg.get("pretrain") or {}).get("weights")
    if weights and not is_torchvision_name(weights) and not Path(weights).expanduser().is_file():
        _fail(f"pretrain.weights: no such file: {weights} (relative paths start at the directory snakemake "
              f"runs in); give the .pth/.th path or a torchvision name like ResNet18_Weights.IMAGENET1K_V1")


# Search methods whose policy must fit `quant.candidates` (uniform and OMPQ have their own bit ranges).
CANDIDATE_SEARCHES = ("ilp", "greedy")


def check_budgets(cfg: dict) -> None:
    """Every budget a candidates-bound search must meet is reachable with all layers at its lowest bits.

    Only the architecture is needed, so this fails before indicators or a supernet are trained.
    """
    policies = {name: pol for name, pol in cfg.get("policies", {}).items()
                if pol["search"] in CANDIDATE_SEARCHES and pol.get("budget")
                and "accuracy_drop" not in pol["budget"]}   # a target on accuracy, not on cost
    if not policies:
        return
    from . import models
    from .build import fixed_bits_of
    from .cost import CostModel

    model_cfg = cfg["model"]
    cost = CostModel.from_model(models.create(model_cfg["arch"], num_classes=model_cfg["num_classes"]),
                                cfg["dataset"]["image_size"], fixed_bits=fixed_bits_of(cfg["quant"]))
    n = len(cost.searchable)
    for name, pol in policies.items():
        low = min(cfg["quant"]["candidates"])
        if pol["search"] == "greedy":
            low = max(low, int(cfg["search"]["greedy"]["min_bits"]))
        try:
            budget = cost.searchable_budget(pol["budget"])
        except ValueError as e:
            _fail(f"policies.{name}.budget: {e}")
        bitops, size = cost.bitops([low] * n, [low] * n), cost.size_bits([low] * n)
        if budget.total_bitops is not None and bitops > budget.total_bitops:
            _fail(f"policies.{name}.budget: {budget.total_bitops / 1e9:.6g} GBitOps cannot be reached: every "
                  f"layer at {low} bits needs {bitops / 1e9:.6g}; raise the budget or add lower bits to "
                  f"quant.candidates")
        if budget.total_size_bits is not None and size > budget.total_size_bits:
            _fail(f"policies.{name}.budget: {budget.total_size_bits / 8 / 2**20:.6g} MiB cannot be reached: "
                  f"every layer at {low}-bit weights needs {size / 8 / 2**20:.6g} MiB; raise the budget or add "
                  f"lower bits to quant.candidates")


# Set to 1 to plan (dry-run) a config meant for another machine: the checks of this machine's data,
# weights, DALI and GPU are skipped; the architecture-only checks still run.
SKIP_MACHINE_CHECKS = "MPQ_SKIP_MACHINE_CHECKS"


def preflight(cfg: dict, *, local_jobs: bool = True) -> list[str]:
    """Run every check; returns notes on what was skipped. `local_jobs` False (jobs run on cluster
    nodes) skips the GPU check, since a login node often has no GPU."""
    check_budgets(cfg)
    if os.environ.get(SKIP_MACHINE_CHECKS) == "1":
        return [f"{SKIP_MACHINE_CHECKS}=1: data, weights, DALI and CUDA are not checked on this machine"]
    check_dataset(cfg)
    check_weights(cfg)
    check_loader(cfg)
    if local_jobs:
        check_device(cfg)
    return []
