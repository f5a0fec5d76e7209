"""RFQuant's bit-width scheduler: temporarily drop the lowest bit of the most turbulent layers.

Weights sitting near a rounding threshold flip between levels from step to step; a layer with
many of them at low bits is "turbulent" and trains worse when it keeps being sampled there.
Every event re-decides which layers lose their lowest candidate (docs/methods/rfquant.md).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..quant import searchable_layers
from .supernet import CandidateState
from ..config import section_defaults
from ..errors import InputError

# The sched_* keys of importance.rfquant; their defaults (the reference's, for 150 epochs) are the schema's.

NEAR_THRESHOLD = 0.125   # within an eighth of a step of a rounding threshold
EDGE_MARGIN = 0.375      # the outer edges of the extreme levels are not counted


def is_event(epoch: int, epochs: int, cfg: dict) -> bool:
    """At the start of epoch e: e > start and (e + 1) mod T == 0, T short early and long late."""
    cfg = section_defaults("importance.rfquant", cfg)
    if epoch <= cfg["sched_start"]:
        return False
    early = epoch <= math.floor(cfg["sched_switch"] * epochs)
    period = cfg["sched_period"] if early else cfg["sched_late_period"]
    return (epoch + 1) % int(period) == 0


def freeze_ratio(epoch: int, epochs: int, cfg: dict) -> float:
    """r(e) = r_min + 0.5 (r_max - r_min)(1 + cos(pi k / (E/2))), k = floor((e - start) / period)."""
    cfg = section_defaults("importance.rfquant", cfg)
    k = math.floor((epoch - cfg["sched_start"]) / cfg["sched_period"])
    lo, hi = cfg["sched_r_min"], cfg["sched_r_max"]
    return lo + 0.5 * (hi - lo) * (1 + math.cos(math.pi * k / (epochs / 2)))


@torch.no_grad()
def turbulence(weight: torch.Tensor, quantizer, candidates) -> float:
    """m = mean over bits b of (share of weights within 1/8 step of a threshold at b) / b."""
    total = 0.0
    for b in candidates:
        qn, qp = quantizer.qrange(b)
        step = quantizer.step_for(b).detach()
        if quantizer.per_channel:
            step = step.view(-1, *([1] * (weight.dim() - 1)))
        u = weight.detach() / step
        inside = (u > qn + EDGE_MARGIN) & (u < qp - EDGE_MARGIN)
        near = (u - (u.floor() + 0.5)).abs() < NEAR_THRESHOLD
        total += (inside & near).sum().item() / weight.numel() / b
    return total / len(candidates)


def layer_turbulence(model: nn.Module, state: CandidateState) -> list[float]:
    """Turbulence of every searchable layer on the live weights, over its current w candidates."""
    return [turbulence(layer.weight, layer.quan_w, cands)
            for (_, layer), cands in zip(searchable_layers(model), state.w)]


def _drop_floor(current: list[int], full: list[int]) -> list[int]:
    """Remove the minimum only while it is still the layer's floor: at most one bit ever goes."""
    if len(current) > 1 and current[-1] == full[-1]:
        return current[:-1]
    return current


def freeze_turbulent(state: CandidateState, scores: list[float], count: int, targets: str = "w") -> list[int]:
    """Drop the lowest candidate of the `count` most turbulent layers, reset all others.

    Ties go to the earlier layer. `targets` 'w' changes weight lists only, 'wa' both. Returns the
    indices of the selected layers.
    """
    if targets not in ("w", "wa"):
        raise InputError(f"scheduler_targets must be 'w' or 'wa', not {targets!r}")
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    chosen = sorted(order[:max(0, count)])
    for i in range(len(scores)):
        selected = i in chosen
        state.w[i] = _drop_floor(state.w[i], state.full_w[i]) if selected else list(state.full_w[i])
        if targets == "wa":
            state.a[i] = _drop_floor(state.a[i], state.full_a[i]) if selected else list(state.full_a[i])
    return chosen


def scheduler_event(model: nn.Module, state: CandidateState, epoch: int, epochs: int, cfg: dict) -> list[str] | None:
    """Run the scheduler at the start of `epoch` if it is an event; returns the frozen layer names."""
    if not is_event(epoch, epochs, cfg):
        return None
    count = math.floor(len(state.names) * freeze_ratio(epoch, epochs, cfg))
    targets = section_defaults("importance.rfquant", cfg)["scheduler_targets"]
    chosen = freeze_turbulent(state, layer_turbulence(model, state), count, targets)
    return [state.names[i] for i in chosen]
