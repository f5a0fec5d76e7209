"""Seeds derived from several integers, so that every (seed, epoch, purpose) gets its own stream.

Adding or multiplying seeds collides ((0, 7) and (7, 0)); numpy's SeedSequence mixes the keys
properly and is stable across versions, which keeps runs reproducible.
"""
from __future__ import annotations

import numpy as np
import torch
from ..errors import InputError


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that depends on every key and on their order."""
    if any(int(k) < 0 for k in keys):
        raise InputError(f"seeds must be non-negative integers, got {keys}")
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))


def generator(*keys: int) -> torch.Generator:
    """A CPU torch.Generator seeded from `keys` (see derive_seed)."""
    return torch.Generator().manual_seed(derive_seed(*keys))


def sampler_for_step(seed: int, global_step: int) -> torch.Generator:
    """The generator of one training step's random bit choices (LIMPQ's mixed pass, RFQuant's
    subnets), reseeded per batch from (seed, step): reproducible and identical on every DDP rank.

    It mixes seed and step itself, not through derive_seed; changing that would change every
    sampled bit choice."""
    return torch.Generator().manual_seed(seed * 1_000_003 + global_step)
