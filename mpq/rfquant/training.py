"""RFQuant one-shot supernet training (docs/methods/rfquant.md).

Each mini-batch runs the max subnet with CE, then `random_paths` random subnets distilled in place
from the max subnet's logits (plus IDM, QE and ARWD terms); gradients accumulate over all passes,
are averaged over DDP ranks, then clipped, and one SGD step (weights), one Adam step (quantizer
steps) and one EMA update follow.
The EMA model is what the search and the subnet stage use.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from ..config import section_defaults, section_keys
from ..data.seeding import sampler_for_step
from ..errors import InputError
from ..quant import set_policy_bits
from ..train.loop import train_epoch
from ..train.optim import lr_factor, set_epoch_lr
from ..train.progress import EpochProgress
from .bit_scheduler import scheduler_event
from .ema import EmaModel
from .losses import IdmTap, min_bit_layers, qe_weight, subnet_regularisers
from .supernet import CandidateState, init_supernet_act_steps, sample_subnet

log = logging.getLogger("mpq")

def rfquant_config(cfg: dict | None) -> dict:
    """importance.rfquant with the schema's defaults (the reference's, for 150 ImageNet epochs)
    filled in for any key not given; unknown keys are an error (typos)."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - section_keys("importance.rfquant"))
    if unknown:
        raise InputError(f"importance.rfquant: unknown key(s) {unknown}; known: "
                         f"{', '.join(sorted(section_keys('importance.rfquant')))}")
    return section_defaults("importance.rfquant", cfg)


def supernet_training_split(train_set, cfg: dict, *, batch_size: int, seed: int):
    """(supernet training set, holdout or None) carved from the training split.

    As in the reference, the supernet trains on the whole split and the greedy search scores on it
    too; holdout_fraction > 0 keeps that share out of training for the search. data_fraction < 1
    then trains on a fixed share of what is left (a CPU-budget option; the search's scoring data
    is not affected), see docs/methods/data-fraction.md.
    """
    from ..data.splits import fraction_subset, split_holdout

    held = None
    if float(cfg["holdout_fraction"]) > 0:
        train_set, held = split_holdout(train_set, float(cfg["holdout_fraction"]), seed)
    return fraction_subset(train_set, cfg["data_fraction"], batch_size, seed), held


def clip_gradients(model: nn.Module, limit: float) -> None:
    """Elementwise clip of every gradient to [-limit, limit].

    Runs after the cross-rank average (the train loop's `after_average`), as the reference clips
    the gradients DDP has already averaged; clipping each rank's own gradient first would differ.
    """
    for p in model.parameters():
        if p.grad is not None:
            p.grad.clamp_(-limit, limit)


def supernet_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, state: CandidateState,
                  generator: torch.Generator, cfg: dict, *, tap: IdmTap | None = None,
                  qe_lambda: float = 0.0):
    """Max subnet + random subnets, gradients accumulated; no clipping (that follows the cross-rank
    average, see clip_gradients) and no optimiser step.

    Returns (summed loss of all passes, max-subnet logits) for logging.
    """
    smoothing = cfg["label_smoothing"]
    set_policy_bits(model, *state.max_subnet())
    if tap is not None:
        tap.record()
    z_max = model(x)
    loss_max = F.cross_entropy(z_max, y, label_smoothing=smoothing)
    loss_max.backward()
    teacher = F.softmax(z_max.detach().float(), dim=1)
    total = loss_max.detach()
    arwd_coef = cfg["arwd"] - cfg["weight_decay"]
    for _ in range(int(cfg["random_paths"])):
        w_bits, a_bits = sample_subnet(state, generator)
        set_policy_bits(model, w_bits, a_bits)
        if tap is not None:
            tap.align(min_bit_layers(state.names, w_bits, state.w))
        z = model(x)
        kl = F.kl_div(F.log_softmax(z.float(), dim=1), teacher, reduction="batchmean")
        loss = 0.5 * F.cross_entropy(z, y, label_smoothing=smoothing) + 0.5 * kl
        if tap is not None:
            loss = loss + cfg["idm_weight"] * tap.loss()
        loss = loss + subnet_regularisers(model, w_bits, state.w, qe_lambda=qe_lambda, arwd_coef=arwd_coef)
        loss.backward()
        total = total + loss.detach()
    if tap is not None:
        tap.off()
    return total, z_max.detach()


def supernet_optimizers(model: nn.Module, cfg: dict) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """SGD Nesterov for weights (decay on 4-D conv weights only) and Adam for quantizer steps."""
    decay, plain, steps = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (steps if name.endswith(".step") else decay if p.dim() == 4 else plain).append(p)
    sgd = torch.optim.SGD([{"params": decay, "weight_decay": cfg["weight_decay"]},
                           {"params": plain, "weight_decay": 0.0}],
                          lr=cfg["lr"], momentum=cfg["momentum"], nesterov=cfg["nesterov"])
    return sgd, torch.optim.Adam(steps, lr=cfg["q_lr"])


class SupernetUpdate:
    """Looks like one optimizer to the train loop: SGD step, Adam step, then the EMA update."""

    def __init__(self, sgd, adam, ema: EmaModel, model: nn.Module):
        self.sgd, self.adam, self.ema, self.model = sgd, adam, ema, model

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.sgd.zero_grad(set_to_none=set_to_none)
        self.adam.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.sgd.step()
        self.adam.step()
        self.ema.update(self.model)


def train_supernet(model: nn.Module, state: CandidateState, train_set, cfg: dict, device, *,
                   batch_size: int, seed: int, workers: int) -> tuple[nn.Module, dict]:
    """Train the supernet (built by build_supernet) on `train_set`; returns (EMA model, metrics).

    `state` is updated in place by the bit-width scheduler; its final lists belong to the EMA model.
    """
    from ..data import make_loader

    cfg = rfquant_config(cfg)
    epochs = int(cfg["epochs"])
    model.to(device)

    def loader(epoch):
        return make_loader(train_set, batch_size, train=True, seed=seed, epoch=epoch, workers=workers)

    init_supernet_act_steps(model, state, next(iter(loader(0)))[0].to(device))
    sgd, adam = supernet_optimizers(model, cfg)
    ema = EmaModel(model, cfg["ema_decay"])
    update = SupernetUpdate(sgd, adam, ema, model)
    tap = IdmTap(model, cfg["idm_target"]) if cfg["idm"] else None
    iters = len(loader(0))
    qe_from, last = int(cfg["qe_start"]) * iters, epochs * iters
    base_sgd, base_adam = [g["lr"] for g in sgd.param_groups], [g["lr"] for g in adam.param_groups]
    min_factor = cfg["min_lr"] / cfg["lr"] if cfg["lr"] else 0.0
    progress, counter, events, stats = EpochProgress(epochs, "supernet"), {"t": 0}, [], {}
    try:
        for epoch in range(epochs):
            if cfg["scheduler"]:
                frozen = scheduler_event(model, state, epoch, epochs, cfg)
                if frozen is not None:
                    events.append({"epoch": epoch, "frozen": frozen})
                    log.info("bit scheduler, epoch %d: lowest weight bit frozen in %s", epoch + 1, frozen)
            factor = lr_factor(epoch, epochs, "cosine", int(cfg["warmup_epochs"]), min_factor)
            set_epoch_lr(sgd, base_sgd, factor)
            set_epoch_lr(adam, base_adam, lr_factor(epoch, epochs, "cosine"))
            qe_on = epoch > int(cfg["qe_start"])

            def step(m, x, y):
                t = counter["t"]
                counter["t"] += 1
                lam = qe_weight(t, qe_from, last, cfg["qe_lambda"]) if qe_on else 0.0
                return supernet_step(m, x, y, state, sampler_for_step(seed, t), cfg, tap=tap, qe_lambda=lam)

            stats = train_epoch(model, loader(epoch), update, device, step=step,
                                after_average=lambda m: clip_gradients(m, cfg["grad_clip"]),
                                where=f"supernet epoch {epoch + 1}")
            progress.report(epoch, loss=stats["loss"], max_subnet_acc=stats["acc"], lr=base_sgd[0] * factor)
    finally:
        if tap is not None:
            tap.close()
    return ema.module, {"train_loss": stats.get("loss"), "max_subnet_train_acc": stats.get("acc"),
                        "epochs": epochs, "steps": counter["t"], "scheduler_events": events}
