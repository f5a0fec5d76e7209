"""Steps that several stage CLIs share: data with its class check, loader settings, the FP32
model and the policy, each checked against the config."""
from __future__ import annotations

from .registry import SEARCH_METHODS
from .errors import InputError


def load_data(spec: dict):
    """Build the configured dataset and check it against model.num_classes."""
    from .data import build_data

    data = build_data(spec["dataset"])
    model_cfg = spec["model"]
    if model_cfg["num_classes"] != data.num_classes:
        raise InputError(f"model.num_classes is {model_cfg['num_classes']} but the dataset has "
                         f"{data.num_classes} classes; set model.num_classes: {data.num_classes}")
    return data


def preprocessing_of(data) -> dict:
    """What a deployed model needs to see its inputs as training did, stored in its checkpoint and
    written into exports: the normalisation, the input size and the class names in label order."""
    return {"mean": [float(v) for v in data.mean], "std": [float(v) for v in data.std],
            "image_size": int(data.image_size), "classes": [str(c) for c in data.classes] or None,
            "rule": "x = (pixels / 255 - mean) / std per channel, RGB, NCHW"}


def loader_args(spec: dict) -> dict:
    """batch_size / seed / workers keyword arguments for the training helpers."""
    ds = spec["dataset"]
    return {"batch_size": int(ds["batch_size"]), "seed": int(spec["seed"]),
            "workers": int(ds["workers"])}


def fp32_model_of(spec: dict, path):
    """The pretrained FP32 model at `path`, checked against the configured arch and class count."""
    from .build import fp32_model

    return fp32_model(path, spec["model"]["arch"], spec["model"]["num_classes"])[0]


def load_policy_for(path, spec: dict):
    """policy.yaml, refused before any work unless it is for the configured model, has one entry
    per searchable layer of it (named, instead of failing later as a count of per-layer lists) and
    uses only the candidate bits (or its search has its own range: uniform baselines such as W8A8;
    OMPQ's [b_min, b_max])."""
    from . import models
    from .policy import Policy
    from .quant import split_layers

    policy = Policy.load(path)
    arch, num_classes = spec["model"]["arch"], spec["model"]["num_classes"]
    if (policy.arch, policy.num_classes) != (arch, num_classes):
        raise InputError(f"{path}: policy is for {policy.arch}/{policy.num_classes} classes but the "
                         f"model is {arch}/{num_classes}; search again for this model")
    policy.check_model(split_layers(models.create(arch, num_classes=num_classes))[1], source=str(path))
    method = (policy.meta.get("search") or {}).get("method")
    if not (method in SEARCH_METHODS and SEARCH_METHODS[method].own_bit_range) and "quant" in spec:
        policy.check_candidates(spec["quant"]["candidates"], source=str(path))
    return policy


def check_supernet_model(ckpt: dict, spec: dict, path) -> None:
    """A supernet checkpoint is for the configured model, or one line says to retrain it."""
    arch, num_classes = spec["model"]["arch"], spec["model"]["num_classes"]
    if ckpt["arch"] != arch or ckpt["num_classes"] != num_classes:
        raise InputError(f"{path}: supernet is for {ckpt['arch']}/{ckpt['num_classes']} classes but the "
                         f"model is {arch}/{num_classes}; rerun train_supernet")
