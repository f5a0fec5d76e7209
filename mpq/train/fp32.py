"""FP32 pretraining of a zoo model."""
from __future__ import annotations

import logging

from torch import nn

from .. import distributed
from ..config import section_defaults
from . import resume
from .loop import evaluate, train_epoch
from .optim import build_optimizer, check_schedule_per, lr_factor, set_epoch_lr
from .progress import EpochProgress

log = logging.getLogger("mpq")


def train_model(model: nn.Module, train_batches, cfg: dict, device, *, what: str,
                step=None, label_smoothing: float = 0.0, on_epoch_end=None, extra_state: dict | None = None,
                optimizer=None, after_average=None) -> dict:
    """Epoch loop with a per-epoch schedule; `train_batches(epoch)` returns that epoch's loader.
    `after_average(model)` is train_epoch's: it edits the gradients after the cross-rank average.

    cfg: epochs, lr, optimizer, weight_decay, momentum, nesterov, schedule, schedule_per (epoch: the
    lr changes between epochs, as the references; iteration: before every step), warmup_epochs,
    warmup_lr, min_lr.
    With an active resume file (mpq.train.resume.activate) the state is saved after every epoch,
    together with the mutable dict `extra_state`, and a rerun continues after the last saved epoch.
    Under DDP every rank runs this loop on its shard; only rank 0 writes the resume file.
    """
    epochs = int(cfg["epochs"])
    optimizer = optimizer or build_optimizer(model, cfg)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    min_factor = cfg["min_lr"] / cfg["lr"] if cfg["lr"] else 0.0
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
    per_iteration = check_schedule_per(cfg["schedule_per"]) == "iteration"

    def factor_at(progress_in_epochs: float) -> float:
        return lr_factor(progress_in_epochs, epochs, cfg["schedule"], cfg["warmup_epochs"],
                         min_factor, warmup_factor=cfg["warmup_lr"] / cfg["lr"] if cfg["warmup_epochs"] else 1.0,
                         per_iteration=per_iteration)

    with resume.stop_on_signals():
        for epoch in range(start, epochs):
            factor = factor_at(epoch)
            set_epoch_lr(optimizer, base_lrs, factor)
            loader = train_batches(epoch)
            before_step = None
            if per_iteration and hasattr(loader, "__len__"):
                def before_step(i, steps, epoch=epoch):
                    set_epoch_lr(optimizer, base_lrs, factor_at(epoch + i / max(1, steps)))
            stats = train_epoch(model, loader, optimizer, device, step=step,
                                label_smoothing=label_smoothing, where=f"{what} epoch {epoch + 1}",
                                after_average=after_average, before_step=before_step)
            progress.report(epoch, loss=stats["loss"], train_acc=stats["acc"], lr=optimizer.param_groups[0]["lr"])
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

    cfg = section_defaults("pretrain", cfg)   # a caller's partial section: the schema's defaults
    model.to(device)
    fit = train_model(model, lambda e: make_loader(data.train, batch_size, train=True, seed=seed, epoch=e,
                                                   workers=workers),
                      cfg, device, what="pretrain", label_smoothing=cfg["label_smoothing"])
    test = evaluate(model, make_loader(data.test, batch_size, train=False, workers=workers), device)
    log.info("pretrain done: test top1=%.2f top5=%.2f loss=%.4f", test["top1"], test["top5"], test["loss"])
    return {**fit, **test}
