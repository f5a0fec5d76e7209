"""Linear CKA ("ORM" in OMPQ, docs/methods/ompq.md) from centred Gram matrices.

Only the N x N centred Gram matrix of each feature map is needed, so features are reduced to it
as soon as they are produced: a ResNet-50 feature map never has to be kept whole.
"""
from __future__ import annotations

import numpy as np
import torch
from ..errors import InputError


def centered_gram(features: torch.Tensor) -> torch.Tensor:
    """H (X X^T) H in float64 for X = features flattened to N x D.

    Centring the columns of X first gives the same matrix as H K H with fewer operations.
    """
    x = features.detach().flatten(1).double()
    x = x - x.mean(0, keepdim=True)
    return x @ x.T


def orm_matrix(grams: list[torch.Tensor], names: list[str] | None = None) -> np.ndarray:
    """L x L matrix of linear CKA between every pair of centred Gram matrices."""
    flat = torch.stack([g.flatten() for g in grams])
    norms = flat.norm(dim=1)
    dead = [i for i, n in enumerate(norms.tolist()) if not n > 0]
    if dead:
        label = [names[i] for i in dead] if names else dead
        raise InputError(f"features of {label} are identical for every sample (CKA is undefined); "
                         "use more or more varied samples")
    unit = flat / norms[:, None]
    orm = (unit @ unit.T).clamp(0.0, 1.0)
    orm.fill_diagonal_(1.0)
    return orm.numpy()


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """CKA of two feature batches with the same N (any trailing shapes)."""
    if x.shape[0] != y.shape[0]:
        raise InputError(f"CKA needs the same samples on both sides, got {x.shape[0]} and {y.shape[0]}")
    return float(orm_matrix([centered_gram(x), centered_gram(y)])[0, 1])
