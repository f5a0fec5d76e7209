"""Where quantizer ranges start: every initialisation rule in one module.

The start decides much of what QAT and PTQ reach, and the recipes choose between these rules,
so they sit side by side rather than inside each quantizer: LSQ's 3-sigma weight steps and
2*mean|x|/sqrt(Qp) activation steps, the MSE step search (docs/methods/oscillations.md,
section 2) and the Lp clipping-range search of the PTQ affine grid (docs/methods/ptq.md).
Functions of tensors, plus the two model-wide passes a finetune starts with.
"""
from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
import torch.distributed as dist
from torch import nn

from ..probe import probe_forward
from .affine import GRIDS, affine_quant
from .base import int_range, is_full_precision
from .layers import quant_modules
from .lsq_kernels import lsq_integers
from ..errors import InputError

SEARCH_STEPS = 80   # Lp search: shrinking clipping ranges tried
SHRINK = 0.01       # Lp search: each range is this fraction of the full one smaller
LP_NORM = 2.4


@runtime_checkable
class StepQuantizer(Protocol):
    """A quantizer on a uniform integer grid with a learnable step per bit-width (LSQ and its
    subclasses): what the MSE init fits. Others (N2UQ's) keep their own starting values."""

    bits: int | None
    signed: bool
    per_channel: bool

    def qrange(self, bits: int | None = None) -> tuple[int, int]: ...

    def set_step(self, value, bits: int | None = None) -> None: ...


def check_input_sign(x: torch.Tensor, signed: bool) -> None:
    """An unsigned activation quantizer must never see a negative input at initialisation."""
    if not signed:
        lo = x.min().item()
        if lo < 0:
            raise InputError(f"activation quantizer declared unsigned got a negative input "
                             f"(min {lo:.4g}); mark the layer's input as signed in the model's "
                             f"signed_inputs")


# --- LSQ ------------------------------------------------------------------------------------------
@torch.no_grad()
def three_sigma_steps(weight: torch.Tensor, candidates, per_channel: bool) -> list[torch.Tensor]:
    """LSQ weight steps max(|mu-3sd|, |mu+3sd|) / 2^(b-1), one per candidate bit-width
    (per output channel when `per_channel`)."""
    if per_channel:
        flat = weight.detach().flatten(1)
        mu, sd = flat.mean(1), flat.std(1)
    else:
        mu, sd = weight.detach().mean(), weight.detach().std()
    spread = torch.maximum((mu - 3 * sd).abs(), (mu + 3 * sd).abs()).clamp_min(1e-8)
    return [spread / -int_range(b, signed=True)[0] for b in candidates]


@torch.no_grad()
def lsq_act_step(x: torch.Tensor, qp: int) -> float:
    """LSQ activation step 2*mean|x|/sqrt(Qp) (at least 1e-8), averaged over DDP ranks."""
    value = 2 * x.detach().abs().mean() / math.sqrt(qp)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return max(value.item(), 1e-8)


@torch.no_grad()
def init_act_steps(model: nn.Module, x: torch.Tensor) -> None:
    """One training-mode forward so every activation quantizer sets its lazy initial step.

    BN layers are kept in eval mode so their running statistics are not touched. Gradients are
    off, so oscillation trackers do not count it as a training iteration.
    """
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    model(x)
    model.eval()


# --- MSE ------------------------------------------------------------------------------------------
@torch.no_grad()
def mse_step(x: torch.Tensor, qn: int, qp: int, candidates: int = 100, margin: float = 0.5,
             per_row: bool = False) -> torch.Tensor:
    """Step minimising sum (x - Q(x))^2 over thresholds k*R/candidates, R = max|x| + margin.

    per_row: one step per row of x.flatten(1) (per-channel weights); else one for the tensor.
    """
    rows = x.detach().float().flatten(1) if per_row else x.detach().float().reshape(1, -1)
    reach = torch.maximum(rows.min(1).values.abs(), rows.max(1).values) + margin
    best_err = torch.full_like(reach, float("inf"))
    best_step = reach / qp
    for k in range(1, candidates + 1):
        step = (k * reach / candidates / qp).unsqueeze(1)
        err = (rows - lsq_integers(rows, step, qn, qp) * step).pow(2).sum(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_step = torch.where(better, step.squeeze(1), best_step)
    return best_step if per_row else best_step[0]


@torch.no_grad()
def mse_range_init(model: nn.Module, x: torch.Tensor) -> None:
    """MSE steps for every LSQ weight, then for every LSQ activation on one batch in eval mode.

    Each activation step is set from its input just before that quantizer runs, so later layers
    see the already-quantized inputs, as in the reference.
    """
    hooks = []
    for _, layer in quant_modules(model):
        q = layer.quan_w
        if isinstance(q, StepQuantizer) and not is_full_precision(q.bits):
            q.set_step(mse_step(layer.weight, *q.qrange(), per_row=q.per_channel))
        a = layer.quan_a
        if isinstance(a, StepQuantizer) and not is_full_precision(a.bits):
            def before(mod, inputs):
                check_input_sign(inputs[0], mod.signed)
                mod.set_step(mse_step(inputs[0], *mod.qrange()).clamp_min(1e-8))
            hooks.append(a.register_forward_pre_hook(before))
    probe_forward(model, x, hooks)


# --- Lp (PTQ affine grid) -------------------------------------------------------------------------
def _reduce_dims(x: torch.Tensor, per_channel: bool) -> tuple[int, ...]:
    return tuple(range(1, x.dim())) if per_channel else tuple(range(x.dim()))


def _shape(v: torch.Tensor, x: torch.Tensor, per_channel: bool) -> torch.Tensor:
    return v.view(-1, *([1] * (x.dim() - 1))) if per_channel else v.reshape(())


@torch.no_grad()
def mse_range(x: torch.Tensor, bits: int, per_channel: bool, grid: str = "affine",
              p: float = LP_NORM) -> tuple[torch.Tensor, torch.Tensor]:
    """(delta, zero) minimising mean |x - x_hat|^p over 80 shrinking clipping ranges.

    The range always contains 0, so the zero-point lies on the grid. 'signed' fixes z = 2^(b-1),
    which gives the symmetric integer range [-2^(b-1), 2^(b-1) - 1].
    """
    if grid not in GRIDS:
        raise InputError(f"weight grid {grid!r} is unknown; use 'affine' or 'signed'")
    _, qmax = int_range(bits, signed=False)
    x = x.detach().float()
    dims = _reduce_dims(x, per_channel)
    hi_0, lo_0 = x.amax(dim=dims).clamp_min(0), x.amin(dim=dims).clamp_max(0)
    best_err = torch.full_like(hi_0, float("inf"))
    best_delta, best_zero = torch.ones_like(hi_0), torch.zeros_like(hi_0)
    for i in range(SEARCH_STEPS):
        hi, lo = hi_0 * (1 - SHRINK * i), lo_0 * (1 - SHRINK * i)
        if grid == "signed":
            qn, qp = int_range(bits, signed=True)
            zero = torch.full_like(hi, -qn)
            delta = (torch.maximum(hi, -lo) / qp).clamp_min(1e-8)
        else:
            delta = ((hi - lo) / qmax).clamp_min(1e-8)
            zero = torch.round(-lo / delta)
        q = affine_quant(x, _shape(delta, x, per_channel), _shape(zero, x, per_channel), qmax)
        err = (x - q).abs().pow(p).mean(dim=dims)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_delta = torch.where(better, delta, best_delta)
        best_zero = torch.where(better, zero, best_zero)
    return best_delta, best_zero
