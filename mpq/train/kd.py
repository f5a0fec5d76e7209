"""Knowledge distillation from the FP32 model, an option of every finetune recipe.

loss = (1 - weight) * CE(labels) + weight * T^2 * soft-CE(teacher / T, student / T).
weight 1 with T = 1 is N2UQ's reference loss (KD only, docs/methods/n2uq.md); T^2 keeps the
soft term's gradient scale independent of T (Hinton et al.).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from ..errors import InputError


@dataclass(frozen=True)
class KdOptions:
    enabled: bool = False
    temperature: float = 1.0
    weight: float = 0.5

    @classmethod
    def from_recipe(cls, recipe: dict) -> "KdOptions":
        cfg = recipe.get("kd") or {}
        if isinstance(cfg, bool):            # `kd: false` in older configs
            cfg = {"enabled": cfg}
        opts = cls(**cfg)
        if opts.temperature <= 0:
            raise InputError(f"kd.temperature must be positive, got {opts.temperature}")
        if not 0 <= opts.weight <= 1:
            raise InputError(f"kd.weight must lie in [0, 1], got {opts.weight}")
        return opts


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                       temperature: float = 1.0) -> torch.Tensor:
    """-mean_batch Σ_c softmax(t/T)_c log softmax(s/T)_c, times T^2."""
    t = temperature
    target = F.softmax(teacher_logits.float() / t, dim=1)
    return -(target * F.log_softmax(student_logits.float() / t, dim=1)).sum(1).mean() * t * t


class Distiller:
    """Task loss with an optional frozen teacher; the teacher always runs in eval mode."""

    def __init__(self, options: KdOptions, teacher: nn.Module | None = None, label_smoothing: float = 0.0):
        if options.enabled and teacher is None:
            raise InputError("kd is enabled but no teacher model was given")
        self.options, self.label_smoothing = options, label_smoothing
        self.teacher = teacher.eval().requires_grad_(False) if options.enabled else None

    def loss(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w = self.options.weight if self.teacher is not None else 0.0
        ce = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing) if w < 1 else 0.0
        if not w:
            return ce
        self.teacher.eval()
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        return (1 - w) * ce + w * soft_cross_entropy(logits, teacher_logits, self.options.temperature)
