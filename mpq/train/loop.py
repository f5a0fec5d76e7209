"""Training and evaluation loops shared by every stage."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn


class NonFiniteLoss(RuntimeError):
    """Training diverged; the stage stops and keeps its last good checkpoint."""


def check_finite(loss: torch.Tensor, where: str) -> None:
    if not torch.isfinite(loss).all():
        raise NonFiniteLoss(f"non-finite loss ({loss.item()}) in {where}; lower the learning rate "
                            f"or check the input data")


def train_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, device,
                step: Callable | None = None, label_smoothing: float = 0.0, where: str = "training") -> dict:
    """One epoch. `step(model, x, y) -> (loss, logits)` runs the forward/backward passes itself
    (multi-pass methods); by default it is one cross-entropy pass."""
    model.train()
    total, correct, loss_sum = 0, 0, 0.0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        if step is None:
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
            check_finite(loss, where)
            loss.backward()
        else:
            loss, logits = step(model, x, y)
            check_finite(loss, where)
        optimizer.step()
        n = y.numel()
        total += n
        loss_sum += loss.item() * n
        correct += (logits.argmax(1) == y).sum().item()
    return {"loss": loss_sum / max(total, 1), "acc": 100.0 * correct / max(total, 1)}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device) -> dict:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy over the whole loader."""
    model.eval()
    total, top1, top5, loss_sum = 0, 0, 0, 0.0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        k = min(5, logits.shape[1])
        pred = logits.topk(k, dim=1).indices
        hit = pred == y[:, None]
        top1 += hit[:, 0].sum().item()
        top5 += hit.any(1).sum().item()
        total += y.numel()
    if total == 0:
        raise ValueError("evaluation set is empty")
    return {"top1": 100.0 * top1 / total, "top5": 100.0 * top5 / total, "loss": loss_sum / total,
            "images": total}


def active_batchnorms(model: nn.Module) -> list[nn.Module]:
    """Plain BN layers plus the active copy of every switchable BN (other copies are untouched)."""
    from ..quant.switchable_bn import SwitchableBatchNorm2d

    inside = {id(c) for m in model.modules() if isinstance(m, SwitchableBatchNorm2d)
              for c in m.copies.values()}
    plain = [m for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in inside]
    return plain + [m.active_bn for m in model.modules() if isinstance(m, SwitchableBatchNorm2d)]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: Iterable, device, num_images: int) -> int:
    """Re-estimate BN statistics as a cumulative average over about `num_images` training images.

    Only BN layers run in train mode; quantizers stay in eval mode, so nothing else changes.
    Returns the number of images used.
    """
    bns = active_batchnorms(model)
    if not bns or num_images <= 0:
        return 0
    model.eval()
    saved = [(bn, bn.momentum) for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    seen = 0
    try:
        for x, _ in loader:
            model(x.to(device, non_blocking=True))
            seen += x.shape[0]
            if seen >= num_images:
                break
    finally:
        for bn, momentum in saved:
            bn.momentum = momentum
        model.eval()
    return seen


def batches_for(num_images: int, batch_size: int) -> int:
    return max(1, math.ceil(num_images / batch_size))
