"""Uniform affine quantisation on [0, 2^b - 1] with a zero-point, and its Lp range search
(docs/methods/ptq.md). The PTQ path's grid; the LSQ layers keep the signed grid.

    x_hat = delta * (clamp(round(x / delta) + z, 0, 2^b - 1) - z)

x / delta, the rounding, the clamp and the integer codes are computed in float32 whatever the
input dtype: under bf16 autocast a bf16 activation divided in bf16 lands on the wrong integer for
a few percent of the elements. The fake-quantised value goes back in the input's dtype.
"""
from __future__ import annotations

import torch
from torch import nn

from .lsq import bit_range_text, round_ste, supported_bits

GRIDS = ("affine", "signed")
SEARCH_STEPS = 80
SHRINK = 0.01
LP_NORM = 2.4
F32 = torch.float32


def grid_max(bits: int) -> int:
    if not supported_bits(int(bits)):
        raise ValueError(f"bit-width {bits} is not supported; use {bit_range_text()} "
                         f"(None or 32 for full precision)")
    return 2 ** int(bits) - 1


def affine_codes(x: torch.Tensor, delta: torch.Tensor, zero: torch.Tensor, qmax: int) -> torch.Tensor:
    """The integer codes clamp(round(x / delta) + z, 0, qmax) in float32, straight-through round."""
    return torch.clamp(round_ste(x.to(F32) / delta.to(F32)) + zero.to(F32), 0, qmax)


def affine_quant(x: torch.Tensor, delta: torch.Tensor, zero: torch.Tensor, qmax: int) -> torch.Tensor:
    """Fake-quantise with a straight-through round, so gradients reach x and delta (LSQ-style)."""
    codes = affine_codes(x, delta, zero, qmax)
    return (delta.to(F32) * (codes - zero.to(F32))).to(x.dtype)


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
        raise ValueError(f"weight grid {grid!r} is unknown; use 'affine' or 'signed'")
    qmax = grid_max(bits)
    x = x.detach().float()
    dims = _reduce_dims(x, per_channel)
    hi_0, lo_0 = x.amax(dim=dims).clamp_min(0), x.amin(dim=dims).clamp_max(0)
    best_err = torch.full_like(hi_0, float("inf"))
    best_delta, best_zero = torch.ones_like(hi_0), torch.zeros_like(hi_0)
    for i in range(SEARCH_STEPS):
        hi, lo = hi_0 * (1 - SHRINK * i), lo_0 * (1 - SHRINK * i)
        if grid == "signed":
            zero = torch.full_like(hi, 2 ** (bits - 1))
            delta = (torch.maximum(hi, -lo) / (2 ** (bits - 1) - 1)).clamp_min(1e-8)
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


class AffineActQuantizer(nn.Module):
    """Per-tensor activation quantiser: learnable step, fixed zero-point, MSE-initialised on its
    first input. `enabled` is run-time state (off during weight reconstruction), not saved."""

    def __init__(self, bits: int | None):
        super().__init__()
        self.bits = None if bits is None or bits >= 32 else int(bits)
        if self.bits is not None:
            grid_max(self.bits)
        self.delta = nn.Parameter(torch.ones(()))
        self.register_buffer("zero", torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.enabled = False

    @torch.no_grad()
    def init_range(self, x: torch.Tensor) -> None:
        delta, zero = mse_range(x, self.bits, per_channel=False)
        self.delta.copy_(delta)
        self.zero.copy_(zero)
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled or self.bits is None:
            return x
        if not self.initialized:
            self.init_range(x)
        return affine_quant(x, self.delta, self.zero, grid_max(self.bits))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, enabled={self.enabled}"
