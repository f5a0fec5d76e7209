"""Weight oscillations in LSQ QAT: tracking, dampening, iterative freezing.

Latent weights near a bin edge flip between two integers every few steps and never settle
(docs/methods/oscillations.md). Each low-bit weight quantizer gets a tracker with the per-element state
of section 3; dampening pulls weights to the centre of their bin (section 4); freezing pins
elements whose oscillation frequency passes a falling threshold (section 5). The MSE range init
of section 2 is in range_init.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .base import is_full_precision
from .layers import quant_modules
from .lsq import LsqQuantizer
from .lsq_kernels import lsq_integers, scale_grad
from ..errors import InputError

MODES = ("none", "dampen", "freeze")
AGGREGATIONS = ("kernel_mean", "sum", "mean")


@dataclass(frozen=True)
class OscillationOptions:
    """The recipe keys of the add-ons; defaults are the spec's (section 7). m is set only here."""

    mode: str = "none"
    ema_momentum: float = 0.001
    freeze_max_bits: int = 4
    anneal_start: float = 0.25
    dampen_weight_start: float = 0.0
    dampen_weight_final: float = 0.1
    dampen_aggregation: str = "kernel_mean"
    freeze_threshold_start: float = 0.1
    freeze_threshold_final: float = 0.01
    freeze_threshold_final_per_bit: dict = field(default_factory=dict)
    freeze_use_ema: bool = True

    KEYS = ("ema_momentum", "freeze_max_bits", "anneal_start", "dampen_weight_start",
            "dampen_weight_final", "dampen_aggregation", "freeze_threshold_start",
            "freeze_threshold_final", "freeze_threshold_final_per_bit", "freeze_use_ema")

    @classmethod
    def from_recipe(cls, recipe: dict) -> "OscillationOptions":
        opts = cls(mode=recipe["oscillation"],
                   **{k: recipe[k] for k in cls.KEYS if k in recipe})
        opts.validate()
        return opts

    def validate(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"oscillation {self.mode!r} is unknown; use one of {', '.join(MODES)}")
        if self.dampen_aggregation not in AGGREGATIONS:
            raise InputError(f"dampen_aggregation {self.dampen_aggregation!r} is unknown; use one of "
                             f"{', '.join(AGGREGATIONS)}")
        if not 0 < self.ema_momentum < 1:
            raise InputError(f"ema_momentum must lie in (0, 1), got {self.ema_momentum}")
        if not 0 <= self.anneal_start < 1:
            raise InputError(f"anneal_start must lie in [0, 1), got {self.anneal_start}")
        if self.mode == "freeze" and not self.freeze_threshold_start > 0:
            # The reference's EfficientNet "freeze" runs never froze anything (spec section 8.2).
            raise InputError("oscillation: freeze needs freeze_threshold_start > 0, otherwise nothing "
                             "ever freezes")

    def final_threshold(self, bits: int) -> float:
        per_bit = {int(k): float(v) for k, v in self.freeze_threshold_final_per_bit.items()}
        return per_bit.get(int(bits), self.freeze_threshold_final)


def cosine_anneal(t: int, total: int, start: float, final: float, anneal_start: float = 0.25) -> float:
    """0 before anneal_start*total, then a cosine from `start` to `final` at the end (sections 4, 5)."""
    begin = anneal_start * total
    if t < begin:
        return 0.0
    r = min(1.0, (t - begin) / max(total - begin, 1e-12))
    return final + 0.5 * (start - final) * (1 + math.cos(math.pi * r))


class OscillationTracker(nn.Module):
    """Per-element oscillation state of one weight tensor (spec section 3); all of it checkpointed.

    `threshold` is set from outside each iteration (0 = no freezing). As in the reference, the
    integer EMA that gives the frozen values exists only once freezing is on: it is seeded with
    the codes of the first iteration whose threshold is > 0 and updated only while it stays > 0
    (docs/methods/oscillations.md). All state is float32 (int8/bool), whatever the autocast.
    """

    def __init__(self, shape, momentum: float, use_ema: bool = True):
        super().__init__()
        self.momentum, self.use_ema, self.threshold = float(momentum), bool(use_ema), 0.0
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))
        self.register_buffer("ema_started", torch.zeros((), dtype=torch.bool))
        self.register_buffer("prev_int", torch.zeros(shape, dtype=torch.float32))
        self.register_buffer("last_dir", torch.zeros(shape, dtype=torch.int8))
        self.register_buffer("freq", torch.zeros(shape, dtype=torch.float32))
        self.register_buffer("ema_int", torch.zeros(shape, dtype=torch.float32))
        self.register_buffer("frozen", torch.zeros(shape, dtype=torch.bool))
        self.register_buffer("frozen_int", torch.zeros(shape, dtype=torch.float32))
        self.register_buffer("oscillating", torch.zeros(()), persistent=False)
        self._flags = {"started": False, "ema_started": False}   # Python mirrors: no GPU sync per step

    def _is_set(self, name: str) -> bool:
        """A flag buffer, read from the device only until it is true (it never turns false)."""
        if not self._flags[name]:
            self._flags[name] = bool(getattr(self, name))
        return self._flags[name]

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._flags = dict.fromkeys(self._flags, False)   # re-read from the loaded buffers

    def _raise_flag(self, name: str) -> None:
        getattr(self, name).fill_(True)
        self._flags[name] = True

    def apply_frozen(self, codes: torch.Tensor) -> torch.Tensor:
        return torch.where(self.frozen, self.frozen_int, codes)

    @torch.no_grad()
    def update(self, codes: torch.Tensor) -> None:
        """One training iteration; `codes` already has the frozen values applied."""
        codes = codes.to(self.prev_int.dtype)
        if not self._is_set("started"):
            self.prev_int.copy_(codes)
            self._raise_flag("started")
        m = self.momentum
        direction = torch.sign(codes - self.prev_int).to(torch.int8)
        moved = direction != 0
        osc = moved & (direction == -self.last_dir)
        self.last_dir.copy_(torch.where(moved, direction, self.last_dir))
        self.freq.mul_(1 - m).add_(osc.to(self.freq.dtype), alpha=m)
        self.oscillating.copy_(osc.float().mean())
        if self.threshold > 0:
            self._freeze(codes)
        self.prev_int.copy_(codes)

    def _freeze(self, codes: torch.Tensor) -> None:
        """Pin every element above the threshold to round(EMA before this step's update).

        As in the reference, an element that is already frozen but still above the threshold
        takes the new rounded EMA too; an element never thaws.
        """
        if not self._is_set("ema_started"):
            self.ema_int.copy_(codes)
            self._raise_flag("ema_started")
        hot = self.freq > self.threshold
        value = self.ema_int.round() if self.use_ema else codes
        # New tensors, not in-place: this step's forward saved the old ones for backward.
        self.frozen_int = torch.where(hot, value, self.frozen_int)
        self.frozen = self.frozen | hot
        self.ema_int.mul_(1 - self.momentum).add_(codes, alpha=self.momentum)


class TrackedLsqQuantizer(LsqQuantizer):
    """An LSQ weight quantizer whose codes are tracked in training and frozen where they oscillate.

    Frozen elements return s * frozen_int: no gradient to the latent weight, gradient to s.
    """

    def __init__(self, base: LsqQuantizer, weight_shape, momentum: float, use_ema: bool = True):
        if base.kind != "weight":
            raise InputError("oscillation tracking applies to weight quantizers only")
        super().__init__(**base.config())
        self.load_state_dict(base.state_dict())
        self.to(base.step.device)
        self.bits = base.bits
        self.tracker = OscillationTracker(weight_shape, momentum, use_ema).to(base.step.device)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if is_full_precision(self.bits):
            return w
        step, qn, qp, g = self.prepare(w)
        out = self.fake_quant(w, step, qn, qp, g)
        t = self.tracker
        out = torch.where(t.frozen, scale_grad(step, g) * t.frozen_int, out)
        if self.training and torch.is_grad_enabled():
            t.update(t.apply_frozen(lsq_integers(w, step.detach(), qn, qp)))
        return out

    @torch.no_grad()
    def integer_codes(self, x):
        codes, step, qn, qp = super().integer_codes(x)
        return self.tracker.apply_frozen(codes), step, qn, qp


def track_oscillations(model: nn.Module, options: OscillationOptions) -> list[TrackedLsqQuantizer]:
    """Give every LSQ weight quantizer at <= freeze_max_bits a tracker (8-bit fixed layers never)."""
    tracked = []
    for _, layer in quant_modules(model):
        q = layer.quan_w
        if type(q) is not LsqQuantizer or is_full_precision(q.bits) or q.bits > options.freeze_max_bits:
            continue
        layer.quan_w = TrackedLsqQuantizer(q, layer.weight.shape, options.ema_momentum,
                                           options.freeze_use_ema)
        tracked.append(layer.quan_w)
    return tracked


def dampening_loss(model: nn.Module, aggregation: str = "kernel_mean") -> torch.Tensor:
    """Sum over quantized layers of agg((q(w) - clip(w))^2): pulls w to its bin centre (section 4).

    q(w) and the clip bounds are detached, so only the latent weights get gradient.
    """
    total = None
    for _, layer in quant_modules(model):
        q = layer.quan_w
        if not isinstance(q, LsqQuantizer) or is_full_precision(q.bits):
            continue
        w = layer.weight
        codes, step, qn, qp = q.integer_codes(w)
        clipped = torch.minimum(torch.maximum(w, step * qn), step * qp)
        sq = (codes * step - clipped).pow(2)
        term = {"kernel_mean": lambda: sq.sum(0).mean(), "sum": sq.sum, "mean": sq.mean}[aggregation]()
        total = term if total is None else total + term
    if total is None:
        raise InputError("dampening needs at least one quantized LSQ weight")
    return total


class OscillationControl:
    """Runs the schedules: call begin_iteration() before each training forward."""

    def __init__(self, model: nn.Module, options: OscillationOptions, total_iterations: int):
        self.model, self.options, self.total = model, options, int(total_iterations)
        self.quantizers = [m for m in model.modules() if isinstance(m, TrackedLsqQuantizer)]
        self.t, self.dampen_weight = 0, 0.0

    def begin_iteration(self) -> None:
        """Set this iteration's weights; the schedules count iterations from 1, as the reference's
        trainer does when it updates them (ignite's ITERATION_STARTED)."""
        o, t = self.options, self.t + 1
        if o.mode == "dampen":
            self.dampen_weight = cosine_anneal(t, self.total, o.dampen_weight_start,
                                               o.dampen_weight_final, o.anneal_start)
        if o.mode == "freeze":
            for q in self.quantizers:
                q.tracker.threshold = cosine_anneal(t, self.total, o.freeze_threshold_start,
                                                    o.final_threshold(q.bits), o.anneal_start)
        self.t += 1

    def regulariser(self) -> torch.Tensor | None:
        if self.options.mode != "dampen" or self.dampen_weight == 0:
            return None
        return self.dampen_weight * dampening_loss(self.model, self.options.dampen_aggregation)


@torch.no_grad()
def oscillation_stats(model: nn.Module) -> dict:
    """Fraction oscillating in the last step, mean frequency, fraction frozen (over all elements)."""
    trackers = [m.tracker for m in model.modules() if isinstance(m, TrackedLsqQuantizer)]
    n = sum(t.freq.numel() for t in trackers)
    if not n:
        return {}
    return {"oscillating": sum(t.oscillating.item() * t.freq.numel() for t in trackers) / n,
            "mean_freq": sum(t.freq.sum().item() for t in trackers) / n,
            "frozen": sum(t.frozen.sum().item() for t in trackers) / n}

