"""Optimizers and learning-rate schedules written out explicitly (specs/limpq.md section 10 #10)."""
from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float, quant_lr: float | None = None,
                 quant_weight_decay: float = 0.0):
    """Weight decay only on parameters with >= 2 dims; quantizer steps optionally in their own group."""
    decay, no_decay, quant = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if quant_lr is not None and name.endswith(".step"):
            quant.append(p)
        elif p.dim() >= 2:
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if quant:
        groups.append({"params": quant, "weight_decay": quant_weight_decay, "lr": quant_lr})
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    """cfg keys: optimizer (sgd|adam|adamw), lr, weight_decay, momentum, nesterov, quant_lr."""
    name = cfg.get("optimizer", "sgd")
    groups = param_groups(model, cfg.get("weight_decay", 0.0), cfg.get("quant_lr"))
    lr = cfg["lr"]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.get("momentum", 0.9),
                               nesterov=cfg.get("nesterov", True))
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"optimizer {name!r} is unknown; use sgd, adam or adamw")


def lr_factor(epoch: int, epochs: int, schedule: str = "cosine", warmup: int = 0,
              min_factor: float = 0.0) -> float:
    """Multiplier of the base lr at the start of `epoch` (stepped once per epoch)."""
    if warmup and epoch < warmup:
        return min_factor + (1 - min_factor) * (epoch + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1, epochs - warmup)
        t = min(1.0, (epoch - warmup) / span)
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * t))
    raise ValueError(f"schedule {schedule!r} is unknown; use cosine or constant")


def set_epoch_lr(optimizer: torch.optim.Optimizer, base_lrs: list[float], factor: float) -> None:
    for group, base in zip(optimizer.param_groups, base_lrs):
        group["lr"] = base * factor
