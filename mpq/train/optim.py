"""Optimizers and learning-rate schedules written out explicitly, not taken from timm."""
from __future__ import annotations

import math

import torch
from torch import nn
from ..errors import InputError


WEIGHT_DECAY_SCOPES = ("matrices", "all")


def check_weight_decay_scope(scope: str) -> str:
    if scope not in WEIGHT_DECAY_SCOPES:
        raise InputError(f"weight_decay_scope {scope!r} is unknown; use {' or '.join(WEIGHT_DECAY_SCOPES)}")
    return scope


def param_groups(model: nn.Module, weight_decay: float, quant_lr: float | None = None,
                 quant_weight_decay: float = 0.0, scope: str = "matrices"):
    """Weight decay on parameters with >= 2 dims (scope 'matrices', timm's rule) or on every
    parameter (scope 'all', plain torch SGD as in oscillations-qat); quantizer steps optionally
    in their own group."""
    check_weight_decay_scope(scope)
    decay, no_decay, quant = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if quant_lr is not None and name.endswith(".step"):
            quant.append(p)
        elif p.dim() >= 2 or scope == "all":
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if quant:
        groups.append({"params": quant, "weight_decay": quant_weight_decay, "lr": quant_lr})
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    """cfg keys: optimizer (sgd|adam|adamw), lr, weight_decay, weight_decay_scope (matrices|all),
    momentum, nesterov, quant_lr."""
    name = cfg["optimizer"]
    # A section without weight_decay_scope (pretrain, the LIMPQ indicators) decays matrices only.
    groups = param_groups(model, cfg["weight_decay"], cfg.get("quant_lr"),
                          scope=cfg.get("weight_decay_scope", "matrices"))
    lr = cfg["lr"]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg["momentum"], nesterov=cfg["nesterov"])
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise InputError(f"optimizer {name!r} is unknown; use sgd, adam or adamw")




SCHEDULE_UNITS = ("epoch", "iteration")


def check_schedule_per(unit: str) -> str:
    if unit not in SCHEDULE_UNITS:
        raise InputError(f"schedule_per {unit!r} is unknown; use {' or '.join(SCHEDULE_UNITS)}")
    return unit


def lr_factor(epoch: float, epochs: int, schedule: str = "cosine", warmup: float = 0,
              min_factor: float = 0.0, warmup_factor: float | None = None,
              per_iteration: bool = False) -> float:
    """Multiplier of the base lr at the start of `epoch` (stepped once per epoch).

    per_iteration: `epoch` is the fractional progress (epoch + batch / batches) of an lr updated
    before every optimizer step (timm's step_update); the same curves, sampled finely, so a
    one-epoch run anneals instead of running at the base lr throughout. Linear is then
    1 - progress / epochs (it starts at the base lr, as the per-epoch form's step 0 would).

    The values of timm's CosineLRScheduler (warmup_prefix off, t_initial = epochs): a linear
    warm-up from `warmup_factor` (timm's warmup_lr / lr; None: min_factor) rising by
    (1 - warmup_factor) / warmup per epoch, then the cosine of epoch / epochs from the base lr
    down to min_factor, which it holds after `epochs`. Warm-up epochs are part of `epochs`, so
    the cosine phase starts where the plain cosine of epoch `warmup` is, just below the base lr.
    """
    if warmup and epoch < warmup:
        start = min_factor if warmup_factor is None else warmup_factor
        return start + (1 - start) * epoch / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        t = min(1.0, epoch / max(1, epochs))
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "linear":
        # N2UQ's LambdaLR(1 - step / epochs), stepped before each epoch: epoch 0 already runs at
        # 1 - 1/E and the last epoch at 0 (docs/methods/n2uq.md).
        t = min(1.0, (epoch + (0 if per_iteration else 1)) / max(1, epochs))
        return min_factor + (1 - min_factor) * (1 - t)
    raise InputError(f"schedule {schedule!r} is unknown; use cosine, linear or constant")


def set_epoch_lr(optimizer: torch.optim.Optimizer, base_lrs: list[float], factor: float) -> None:
    for group, base in zip(optimizer.param_groups, base_lrs):
        group["lr"] = base * factor
