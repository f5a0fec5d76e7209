"""A fixed batch of unlabeled training images, for calibration-only methods (OMPQ, PTQ).

Drawn from the training split only (never test data) and fixed by the seed, so a rerun sees the
same images; the evaluation transform unless augmentation is asked for.
"""
from __future__ import annotations

import torch

from .loaders import make_loader
from .splits import subset


def calibration_images(dataset, n: int, seed: int, augment: bool = False, batch_size: int = 256,
                       workers: int = 0) -> torch.Tensor:
    """n images (or all there are) as one normalised float NCHW tensor on the CPU."""
    chosen = subset(dataset, int(n), seed)
    # Every rank takes the same full batch (no DDP sharding): the images define the calibration.
    loader = make_loader(chosen, batch_size, train=augment, seed=seed, workers=workers, drop_last=False,
                         device="cpu", kind="torch", shard=False)
    return torch.cat([x for x, _ in loader])
