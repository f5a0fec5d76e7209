"""Training and evaluation loops shared by every stage.

On CUDA the loops run under bf16 autocast with channels_last tensors (set MPQ_AMP=0 to keep fp32);
on CPU they are plain fp32, bit-for-bit what they always were. Under DDP (mpq.distributed) the
plain one-pass step runs through DistributedDataParallel, multi-pass steps average gradients
after the step, and epoch statistics and evaluation counts are summed over ranks.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..errors import InputError, MachineError

log = logging.getLogger("mpq")
_DDP: dict = {}   # id(model) -> (model, its DistributedDataParallel wrapper), built once


def accelerated(device) -> bool:
    """Whether bf16 autocast and channels_last apply: CUDA, unless MPQ_AMP=0."""
    return torch.device(device).type == "cuda" and os.environ.get("MPQ_AMP", "1") != "0"


def autocast(device):
    """bf16 autocast on CUDA (no loss scaling needed), a no-op context elsewhere."""
    if accelerated(device):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_model(model: nn.Module, device) -> nn.Module:
    """channels_last weights on CUDA (idempotent); unchanged on CPU."""
    if accelerated(device):
        model.to(memory_format=torch.channels_last)
    return model


def prepare_input(x: torch.Tensor, device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if accelerated(device) and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper, or the model itself."""
    return getattr(model, "module", model) if isinstance(
        model, torch.nn.parallel.DistributedDataParallel) else model


def _ddp(model: nn.Module, device) -> nn.Module:
    """The DDP wrapper of `model` (one per model and process), or the model when not distributed."""
    if not distributed.is_initialized():
        return model
    entry = _DDP.get(id(model))
    if entry is None or entry[0] is not model:
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        entry = _DDP[id(model)] = (model, distributed.wrap(model, device))
    return entry[1]


class NonFiniteLoss(MachineError):
    """Training diverged; the stage stops and keeps its last good checkpoint."""


def check_finite(loss: torch.Tensor, where: str) -> None:
    if not torch.isfinite(loss).all():
        raise NonFiniteLoss(f"non-finite loss ({loss.item()}) in {where}; lower the learning rate "
                            f"or check the input data")


# The epoch loop keeps its sums on the device and looks at them every SYNC_EVERY steps: a
# `.item()` per step stalls a CUDA stream until the step is done, so the host could not queue the
# next one. A non-finite loss is still caught within SYNC_EVERY steps and always before the epoch
# returns, i.e. before anything is written (the stage then keeps its last good checkpoint).
SYNC_EVERY = 50
# At those checks, an epoch running longer than this many seconds logs a progress line (long
# epochs, e.g. ImageNet, or CIFAR on a CPU), so the rule's log shows that the stage is alive.
PROGRESS_EVERY_S = float(os.environ.get("MPQ_PROGRESS_EVERY", "60"))


def train_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, device,
                step: Callable | None = None, label_smoothing: float = 0.0, where: str = "training",
                after_average: Callable[[nn.Module], None] | None = None,
                before_step: Callable[[int, int], None] | None = None) -> dict:
    """One epoch. `step(model, x, y) -> (loss, logits)` runs the forward/backward passes itself
    (multi-pass methods); by default it is one cross-entropy pass. `after_average(model)` edits
    the final gradients (e.g. clipping) after the cross-rank average, before the optimizer step.
    `before_step(i, steps)` runs before batch i (0-based) of `steps` (per-iteration lr schedules).

    Distributed: the default pass goes through DDP; after a custom step the gradients are
    averaged over ranks; the returned loss/acc cover all ranks; rank 0's buffers (BN statistics)
    are copied to every rank at the end so the replicas stay identical.
    """
    model.train()
    prepare_model(model, device)
    forward = _ddp(model, device) if step is None else model
    total, correct, loss_sum = 0, None, None
    steps = len(loader) if hasattr(loader, "__len__") else None
    t0 = last_line = time.perf_counter()
    for i, (x, y) in enumerate(loader, 1):
        if before_step is not None:
            before_step(i - 1, steps)
        x, y = prepare_input(x, device), y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device):
            if step is None:
                logits = forward(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
                loss.backward()
            else:
                loss, logits = step(model, x, y)
                distributed.average_gradients(model)
        if after_average is not None:
            after_average(model)
        optimizer.step()
        n = y.numel()
        total += n
        batch_loss = loss.detach().float() * n
        batch_correct = (logits.detach().argmax(1) == y).sum()
        loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
        correct = batch_correct if correct is None else correct + batch_correct
        if i % SYNC_EVERY == 0:
            check_finite(loss_sum, where)
            if time.perf_counter() - last_line >= PROGRESS_EVERY_S:
                last_line = time.perf_counter()
                _log_step(where, i, steps, total, loss_sum.item(), int(correct.item()), last_line - t0)
    if loss_sum is None:
        loss_sum, correct = 0.0, 0
    else:
        check_finite(loss_sum, where)
        loss_sum, correct = loss_sum.item(), int(correct.item())
    if distributed.is_initialized():
        total, loss_sum, correct = distributed.all_reduce_sum([total, loss_sum, correct])
        distributed.broadcast_state(model)
    return {"loss": loss_sum / max(total, 1), "acc": 100.0 * correct / max(total, 1)}


def _log_step(where: str, step: int, steps: int | None, seen: int, loss_sum: float, correct: int,
              elapsed: float) -> None:
    of = f"/{steps}" if steps else ""
    eta = f" epoch_eta={elapsed / step * (steps - step):.0f}s" if steps else ""
    log.info("%s step %d%s loss=%.4g acc=%.2f %.0f img/s elapsed=%.0fs%s", where, step, of,
             loss_sum / seen, 100.0 * correct / seen, seen / elapsed, elapsed, eta)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device) -> dict:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy over the whole loader.

    A loader sharded across DDP ranks (`loader.sharded`) gives each rank part of the set; the
    counts are then summed over ranks, so every rank returns the metrics of the whole set.
    """
    model = unwrap(model)
    model.eval()
    prepare_model(model, device)
    total, sums = 0, torch.zeros(3, dtype=torch.float64, device=device)   # loss, top-1, top-5
    for x, y in loader:
        x, y = prepare_input(x, device), y.to(device, non_blocking=True)
        with autocast(device):
            logits = model(x).float()
        k = min(5, logits.shape[1])
        hit = logits.topk(k, dim=1).indices == y[:, None]
        sums += torch.stack([F.cross_entropy(logits, y, reduction="sum").double(),
                             hit[:, 0].sum().double(), hit.any(1).sum().double()])
        total += y.numel()
    loss_sum, top1, top5 = sums.tolist()
    top1, top5 = int(round(top1)), int(round(top5))
    if getattr(loader, "sharded", False) and distributed.is_initialized():
        total, top1, top5, loss_sum = distributed.all_reduce_sum([total, top1, top5, loss_sum])
        total, top1, top5 = int(total), int(top1), int(top5)
    if total == 0:
        raise InputError("evaluation set is empty")
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
    Returns the number of images used (by this rank; under DDP the statistics are then averaged
    over ranks, so every replica ends with the same BN buffers).
    """
    model = unwrap(model)
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
    prepare_model(model, device)
    try:
        with autocast(device):
            for x, _ in loader:
                model(prepare_input(x, device))
                seen += x.shape[0]
                if seen >= num_images:
                    break
    finally:
        for bn, momentum in saved:
            bn.momentum = momentum
        model.eval()
    if distributed.is_initialized():
        for bn in bns:
            for stat in (bn.running_mean, bn.running_var):
                if stat is not None:
                    distributed.all_reduce_mean_(stat)
    return seen


def batches_for(num_images: int, batch_size: int) -> int:
    return max(1, math.ceil(num_images / batch_size))
