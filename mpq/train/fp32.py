"""FP32 pretraining of a zoo model."""
from __future__ import annotations

import logging

from torch import nn

from .loop import evaluate, train_epoch
from .optim import build_optimizer, lr_factor, set_epoch_lr
from .progress import EpochProgress

log = logging.getLogger("mpq")


def train_model(model: nn.Module, train_batches, cfg: dict, device, *, what: str,
                step=None, label_smoothing: float = 0.0, on_epoch_end=None) -> dict:
    """Epoch loop with a per-epoch schedule; `train_batches(epoch)` returns that epoch's loader.

    cfg: epochs, lr, optimizer, weight_decay, momentum, nesterov, schedule, warmup_epochs, min_lr.
    """
    epochs = int(cfg["epochs"])
    optimizer = build_optimizer(model, cfg)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    min_factor = cfg.get("min_lr", 0.0) / cfg["lr"] if cfg["lr"] else 0.0
    progress = EpochProgress(epochs, what)
    stats = {}
    for epoch in range(epochs):
        factor = lr_factor(epoch, epochs, cfg.get("schedule", "cosine"), cfg.get("warmup_epochs", 0),
                           min_factor)
        set_epoch_lr(optimizer, base_lrs, factor)
        stats = train_epoch(model, train_batches(epoch), optimizer, device, step=step,
                            label_smoothing=label_smoothing, where=f"{what} epoch {epoch + 1}")
        progress.report(epoch, loss=stats["loss"], train_acc=stats["acc"], lr=base_lrs[0] * factor)
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    return {"train_loss": stats.get("loss"), "train_acc": stats.get("acc"), "epochs": epochs}


def pretrain(model: nn.Module, data, cfg: dict, device, *, batch_size: int, seed: int, workers: int) -> dict:
    """Train the float model from scratch; test accuracy is measured once, at the end."""
    from ..data import make_loader

    model.to(device)
    fit = train_model(model, lambda e: make_loader(data.train, batch_size, train=True, seed=seed, epoch=e,
                                                   workers=workers),
                      cfg, device, what="pretrain", label_smoothing=cfg.get("label_smoothing", 0.0))
    test = evaluate(model, make_loader(data.test, batch_size, train=False, workers=workers), device)
    log.info("pretrain done: test top1=%.2f top5=%.2f loss=%.4f", test["top1"], test["top5"], test["loss"])
    return {**fit, **test}
