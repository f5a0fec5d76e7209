"""LIMPQ joint indicator training and extraction (docs/methods/limpq.md).

Every searchable layer gets a multi-bit LSQ quantizer (one step per candidate) and a switchable BN
keyed by bit. Each optimisation step runs K uniform passes plus one random mixed pass with summed
gradients; the learned steps are the importance indicators.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import section_defaults
from ..data.seeding import sampler_for_step
from ..quant import convert_model, searchable_layers, set_layer_bits, set_uniform_bits
from ..errors import InputError


# The LIMPQ reference's indicator training: SGD with Nesterov momentum, a cosine per epoch down to
# 1e-5, no warm-up; the config section sets epochs, lr, weight decay and label smoothing.
INDICATOR_TRAINING = {"optimizer": "sgd", "momentum": 0.9, "nesterov": True, "schedule": "cosine",
                      "schedule_per": "epoch", "warmup_epochs": 0, "warmup_lr": 0.0, "min_lr": 1e-5}


def build_indicator_model(model: nn.Module, *, image_size: int, candidates, fixed_bits,
                          fixed_layers_fp: bool = False, grad_scale: bool = True,
                          grad_scale_numel: str = "tensor", clamp_step=(1e-5, 1.0)) -> nn.Module:
    """Wrap a float model for indicator training (in place); grad_scale(_numel) as `quant` says."""
    fixed = ((None, None), (None, None)) if fixed_layers_fp else fixed_bits
    return convert_model(model, image_size=image_size, weight_candidates=list(candidates),
                         act_candidates=list(candidates), fixed_bits=fixed, switchable_bn="bit",
                         grad_scale=grad_scale, grad_scale_numel=grad_scale_numel, clamp_step=clamp_step)


def indicator_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, candidates,
                   generator: torch.Generator, label_smoothing: float = 0.1):
    """K uniform passes + 1 random mixed pass, gradients summed (clipping follows the cross-rank
    average: clip_and_drop_zero_gradients).

    Returns (summed loss, logits of the last uniform pass) for logging.
    """
    cands = sorted(candidates, reverse=True)
    total = 0.0
    logits_out = None
    for b in cands:
        set_uniform_bits(model, b)
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        loss.backward()
        total = total + loss.detach()
        if logits_out is None:
            logits_out = logits.detach()
    for name, _ in searchable_layers(model):
        b = cands[int(torch.randint(len(cands), (1,), generator=generator))]
        set_layer_bits(model, name, b, b)
    loss = F.cross_entropy(model(x), y, label_smoothing=label_smoothing)
    loss.backward()
    total = total + loss.detach()
    return total, logits_out


def clip_and_drop_zero_gradients(model: nn.Module, limit: float = 1.0) -> None:
    """Clip every gradient to [-limit, limit], then drop the all-zero ones (the optimizer skips them).

    The reference does this after DDP has averaged the gradients. Run per rank before the
    average, the clip would differ from clipping the average, and a gradient that is zero on one
    rank only would be dropped there alone, so the ranks would all-reduce different tensors.
    """
    for p in model.parameters():
        if p.grad is not None:
            p.grad.clamp_(-limit, limit)
            if not p.grad.any():
                p.grad = None


def extract_indicators(model: nn.Module):
    """Read every searchable layer's learned steps, paired with bits through the stored buffer."""
    from ..importance_file import Importance

    names, weight, act = [], {}, {}
    cands = None
    for name, layer in searchable_layers(model):
        names.append(name)
        for kind, q, table in (("weight", layer.quan_w, weight), ("act", layer.quan_a, act)):
            bits = q.candidate_list
            if not bool(q.init_state.all()):
                missing = [b for b, s in zip(bits, q.init_state.tolist()) if not s]
                raise InputError(f"layer {name}: {kind} steps for bits {missing} were never initialised; "
                                 f"train the indicators for at least one step")
            steps = q.step.detach().float()
            if q.clamp_step is not None:
                steps = steps.clamp(*q.clamp_step)
            table[name] = {b: float(s) for b, s in zip(bits, steps.tolist())}
            cands = bits
    return Importance(names=names, candidates=cands, weight=weight, act=act)


def train_indicators(model: nn.Module, data, cfg: dict, device, *, candidates, batch_size: int,
                     seed: int, workers: int) -> dict:
    """Joint indicator training over the training split (cfg: epochs, lr, weight_decay,
    label_smoothing, data_fraction; SGD Nesterov with cosine per epoch, as the reference)."""
    from ..data import make_loader, subset
    from ..train.fp32 import train_model

    cfg = section_defaults("importance.limpq", cfg)   # a caller's partial section: the schema's defaults
    model.to(device)
    train_set = data.train
    fraction = float(cfg["data_fraction"])
    if fraction < 1.0:
        train_set = subset(train_set, max(batch_size, int(len(train_set) * fraction)), seed)
    counter = {"step": 0}

    def step(m, x, y):
        gen = sampler_for_step(seed, counter["step"])
        counter["step"] += 1
        return indicator_step(m, x, y, candidates, gen, cfg["label_smoothing"])

    opt_cfg = {**INDICATOR_TRAINING, **cfg}
    fit = train_model(model, lambda e: make_loader(train_set, batch_size, train=True, seed=seed, epoch=e,
                                                   workers=workers),
                      opt_cfg, device, what="indicators", step=step, extra_state=counter,
                      after_average=clip_and_drop_zero_gradients)
    return {**fit, "steps": counter["step"]}
