"""Uniform affine quantisation on [0, 2^b - 1] with a zero-point (docs/methods/ptq.md): the PTQ
path's grid; the LSQ layers keep the signed grid. The quantiser is in ptq_layers, its range search
in range_init.

    x_hat = delta * (clamp(round(x / delta) + z, 0, 2^b - 1) - z)

x / delta, the rounding, the clamp and the integer codes are computed in float32 whatever the
input dtype: under bf16 autocast a bf16 activation divided in bf16 lands on the wrong integer for
a few percent of the elements. The fake-quantised value goes back in the input's dtype.
"""
from __future__ import annotations

import torch

from .lsq_kernels import round_ste

GRIDS = ("affine", "signed")
F32 = torch.float32


def affine_codes(x: torch.Tensor, delta: torch.Tensor, zero: torch.Tensor, qmax: int) -> torch.Tensor:
    """The integer codes clamp(round(x / delta) + z, 0, qmax) in float32, straight-through round."""
    return torch.clamp(round_ste(x.to(F32) / delta.to(F32)) + zero.to(F32), 0, qmax)


def affine_quant(x: torch.Tensor, delta: torch.Tensor, zero: torch.Tensor, qmax: int) -> torch.Tensor:
    """Fake-quantise with a straight-through round, so gradients reach x and delta (LSQ-style)."""
    codes = affine_codes(x, delta, zero, qmax)
    return (delta.to(F32) * (codes - zero.to(F32))).to(x.dtype)
