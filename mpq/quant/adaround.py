"""AdaRound (specs/ptq.md section 3): learn for each weight whether to round up or down.

    h(V)  = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)        rectified sigmoid
    W_soft = delta * (clamp(floor(W / delta) + h(V) + z, 0, 2^b - 1) - z)

The regulariser pushes h to 0 or 1; its exponent beta anneals from 20 to 2 after a warm-up, so
rounding is free to move early and frozen to a hard choice (V >= 0 means up) at the end.
"""
from __future__ import annotations

import torch

ZETA, GAMMA = 1.1, -0.1
WARMUP = 0.2
BETA_RANGE = (20.0, 2.0)


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


def initial_v(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """V with h(V) equal to the fractional part of W / delta: the soft weight starts at W."""
    scaled = weight / delta
    rest = scaled - torch.floor(scaled)
    return -torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)


def soft_weight(weight, v, delta, zero, qmax: int, hard: bool = False) -> torch.Tensor:
    """Weight on the grid with learned rounding; `hard` takes the final up/down decision."""
    up = (v >= 0).to(weight.dtype) if hard else rectified_sigmoid(v)
    return delta * (torch.clamp(torch.floor(weight / delta) + up + zero, 0, qmax) - zero)


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
