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


OWN_BIT_RANGE = ("uniform", "ompq")


def check_policy_fits(policy, spec: dict, source) -> None:
    """Before any work: the policy is for the configured model and uses only the candidate bits,
    unless its search has its own range (uniform baselines such as W8A8; OMPQ's [b_min, b_max])."""
    arch, num_classes = spec["model"]["arch"], spec["model"]["num_classes"]
    if (policy.arch, policy.num_classes) != (arch, num_classes):
        raise ValueError(f"{source}: policy is for {policy.arch}/{policy.num_classes} classes but the "
                         f"model is {arch}/{num_classes}; search again for this model")
    method = (policy.meta.get("search") or {}).get("method")
    if method not in OWN_BIT_RANGE and "quant" in spec:
        policy.check_candidates(spec["quant"]["candidates"], source=str(source))
