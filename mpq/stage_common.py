"""Steps that several stage CLIs share: data with its class check, loader settings."""
from __future__ import annotations


def load_data(spec: dict):
    """Build the configured dataset and check it against model.num_classes."""
    from .data import build_data

    data = build_data(spec["dataset"])
    model_cfg = spec["model"]
    if model_cfg["num_classes"] != data.num_classes:
        raise ValueError(f"model.num_classes is {model_cfg['num_classes']} but the dataset has "
                         f"{data.num_classes} classes; set model.num_classes: {data.num_classes}")
    return data


def loader_args(spec: dict) -> dict:
    """batch_size / seed / workers keyword arguments for the training helpers."""
    ds = spec["dataset"]
    return {"batch_size": int(ds["batch_size"]), "seed": int(spec.get("seed", 0)),
            "workers": int(ds.get("workers", 0))}
