"""Exponential moving average of a model's floating-point state (RFQuant's searched model).

Averaging smooths the weight noise of multi-path training; integer state (candidate buffers,
init flags, BN batch counters) is copied, since an average of those means nothing.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from ..errors import InputError


class EmaModel:
    """A frozen copy of `model` updated as ema = decay * ema + (1 - decay) * live after each step."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise InputError(f"ema_decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        live = model.state_dict()
        for key, avg in self.module.state_dict().items():
            value = live[key].detach()
            if avg.is_floating_point():
                avg.lerp_(value.to(avg.dtype), 1.0 - self.decay)
            else:
                avg.copy_(value)
