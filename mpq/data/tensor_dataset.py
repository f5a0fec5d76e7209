"""A dataset held in memory as one image tensor, served a whole batch at a time.

Small datasets (digits, CIFAR, synthetic) fit in memory as raw pixels; indexing a batch out of
one tensor avoids per-sample Python work, which is most of the cost of a DataLoader on them.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from . import pixels
from .batch_augment import PadCropFlip
from ..errors import InputError


class TensorImageDataset:
    """Raw images (uint8 in [0, 255] or float in [0, 1], NCHW) with int64 labels.

    `batch` normalises with `mean`/`std`; given a generator it also applies `augment`.
    Indexing one item gives the evaluation view (normalised, not augmented).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float],
                 std: Sequence[float], augment: PadCropFlip = PadCropFlip(),
                 classes: Sequence[str] = ()):
        if images.ndim != 4 or len(images) != len(labels):
            raise InputError(f"expected NCHW images with one label each, got images "
                             f"{tuple(images.shape)} and {len(labels)} labels")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.augment = augment
        self.classes = tuple(classes)
        self._mean = torch.tensor(self.mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x, y = self.batch(torch.tensor([index]))
        return x[0], int(y[0])

    def take(self, indices) -> "TensorImageDataset":
        """The items at `indices`, sharing normalisation and augmentation."""
        indices = torch.as_tensor(indices, dtype=torch.int64)
        return TensorImageDataset(self.images[indices], self.labels[indices], self.mean,
                                  self.std, self.augment, self.classes)

    def to(self, device) -> "TensorImageDataset":
        """The same dataset with images and labels held on `device` (e.g. resident on a GPU)."""
        device = torch.device(device)
        return TensorImageDataset(self.images.to(device), self.labels.to(device), self.mean,
                                  self.std, self.augment, self.classes)

    def batch(self, indices: torch.Tensor, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float32 images and labels at `indices`; augmented if a generator is given."""
        images = self.images[indices]
        if generator is not None:
            images = self.augment(images, generator)
        mean, std = self._mean.to(images.device), self._std.to(images.device)
        x = pixels.to_unit(images).sub_(mean).div_(std).contiguous()
        return x, self.labels[indices]
