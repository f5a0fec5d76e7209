"""FP32 pretraining of a zoo model."""
from __future__ import annotations

import logging

from torch import nn

from .. import distributed
from . import resume
from .loop import evaluate, train_epoch
from .optim import WARMUP_LR, build_optimizer, lr_factor, set_epoch_lr
from .progress import EpochProgress

log = logging.getLogger("mpq")


def train_model(model: nn.Module, train_batches, cfg: dict, device, *, what: str,
                step=None, label_smoothing: float = 0.0, on_epoch_end=None, extra_state: dict | None = None,
                optimizer=None, after_average=None) -> dict:
    """Epoch loop with a per-epoch schedule; `train_batches(epoch)` returns that epoch's loader.
    `after_average(model)` is train_epoch's: it edits the gradients after the cross-rank average.

    cfg: epochs, lr, optimizer, weight_decay, momentum, nesterov, schedule, warmup_epochs, warmup_lr,
    min_lr.
    With an active resume file (mpq.train.resume.activate) the state is saved after every epoch,
    together with the mutable dict `extra_state`, and a rerun continues after the last saved epoch.
    Under DDP every rank runs this loop on its shard; only rank 0 writes the resume file.
    """
    epochs = int(cfg["epochs"])
    optimizer = optimizer or build_optimizer(model, cfg)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    min_factor = cfg.get("min_lr", 0.0) / cfg["lr"] if cfg["lr"] else 0.0
    start, stats = 0, {}
    checkpoint = resume.active()
    saved = checkpoint.load() if checkpoint else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if extra_state is not None:
            extra_state.update(saved["extra"])
        start = saved["epoch"] + 1
        stats = saved["extra"].get("_stats", {})
        log.info("%s: resuming after epoch %d/%d from %s", what, start, epochs, checkpoint.path)
    distributed.broadcast_state(model)   # DDP: every rank starts from rank 0's replica
    progress = EpochProgress(epochs, what, start_epoch=start)
    with resume.stop_on_signals():
        for epoch in range(start, epochs):
            factor = lr_factor(epoch, epochs, cfg.get("schedule", "cosine"), cfg.get("warmup_epochs", 0),
                               min_factor, warmup_factor=cfg.get("warmup_lr", WARMUP_LR) / cfg["lr"])
            set_epoch_lr(optimizer, base_lrs, factor)
            stats = train_epoch(model, train_batches(epoch), optimizer, device, step=step,
                                label_smoothing=label_smoothing, where=f"{what} epoch {epoch + 1}",
                                after_average=after_average)
            progress.report(epoch, loss=stats["loss"], train_acc=stats["acc"], lr=base_lrs[0] * factor)
            if on_epoch_end is not None:
                on_epoch_end(epoch)
            if checkpoint:
                checkpoint.save(epoch=epoch, model=model, optimizer=optimizer,
                                extra={**(extra_state or {}), "_stats": stats})
    return {"train_loss": stats.get("loss"), "train_acc": stats.get("acc"), "epochs": epochs}


def pretrain(model: nn.Module, data, cfg: dict, device, *, batch_size: int, seed: int, workers: int) -> dict:
    """Train the float model as it is (from scratch, or onward from imported weights: see
    mpq.train.pretrained.start_from_weights); test accuracy is measured once, at the end."""
    from ..data import make_loader

    model.to(device)
    fit = train_model(model, lambda e: make_loader(data.train, batch_size, train=True, seed=seed, epoch=e,
                                                   workers=workers),
                      cfg, device, what="pretrain", label_smoothing=cfg.get("label_smoothing", 0.0))
    test = evaluate(model, make_loader(data.test, batch_size, train=False, workers=workers), device)
    log.info("pretrain done: test top1=%.2f top5=%.2f loss=%.4f", test["top1"], test["top5"], test["loss"])
    return {**fit, **test}
