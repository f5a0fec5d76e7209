"""AdaRound (docs/methods/ptq.md): learn for each weight whether to round up or down.

    h(V)  = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)        rectified sigmoid
    W_soft = delta * (clamp(floor(W / delta) + h(V) + z, 0, 2^b - 1) - z)

The regulariser pushes h to 0 or 1; its exponent beta anneals from 20 to 2 after a warm-up, so
rounding is free to move early and frozen to a hard choice (V >= 0 means up) at the end.
W / delta, the floor, the clamp and the codes are float32 whatever the weight's dtype.
"""
from __future__ import annotations

import torch

from .affine import F32

ZETA, GAMMA = 1.1, -0.1
WARMUP = 0.2
BETA_RANGE = (20.0, 2.0)


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


def initial_v(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """V with h(V) equal to the fractional part of W / delta: the soft weight starts at W."""
    scaled = weight.to(F32) / delta.to(F32)
    rest = scaled - torch.floor(scaled)
    return -torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)


def rounding_codes(weight, v, delta, zero, qmax: int, hard: bool = False) -> torch.Tensor:
    """clamp(floor(W / delta) + h(V) + z, 0, qmax) in float32; integers when `hard`."""
    up = (v >= 0).to(F32) if hard else rectified_sigmoid(v.to(F32))
    return torch.clamp(torch.floor(weight.to(F32) / delta.to(F32)) + up + zero.to(F32), 0, qmax)


def soft_weight(weight, v, delta, zero, qmax: int, hard: bool = False) -> torch.Tensor:
    """Weight on the grid with learned rounding; `hard` takes the final up/down decision."""
    codes = rounding_codes(weight, v, delta, zero, qmax, hard)
    return (delta.to(F32) * (codes - zero.to(F32))).to(weight.dtype)


def rounding_regularizer(v: torch.Tensor, beta: float) -> torch.Tensor:
    """sum(1 - |2 h(V) - 1|^beta): zero only when every h is exactly 0 or 1."""
    return (1 - (2 * rectified_sigmoid(v) - 1).abs().pow(beta)).sum()


def annealed_beta(step: int, total: int, warmup: float = WARMUP,
                  beta_range: tuple[float, float] = BETA_RANGE) -> float | None:
    """The regulariser's exponent at `step`; None during warm-up (regulariser off)."""
    start = warmup * total
    if step < start:
        return None
    hi, lo = beta_range
    return lo + (hi - lo) * (1 - (step - start) / max(total - start, 1e-9))
