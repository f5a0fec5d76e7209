"""A dataset of image files that can be read with either its training or its evaluation transform.

The same training images are needed both augmented (training) and plain (search scoring,
BN statistics), so the transform is chosen per access instead of being fixed per dataset.
Training accesses carry a per-sample seed, which makes augmentation reproducible whatever the
number of DataLoader workers.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset


def read_rgb(path: str) -> Image.Image:
    """The image at path as RGB; an unreadable file is a ValueError naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


class FolderDataset(Dataset):
    """(path, label) samples with a train and an eval transform.

    `dataset[i]` is the evaluation view; `dataset[(i, seed)]` the augmented view, its
    randomness drawn from `seed` without touching the caller's global RNG.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], classes: Sequence[str],
                 train_transform: Callable, eval_transform: Callable, mean, std,
                 style: str | None = None, image_size: int | None = None):
        self.samples = list(samples)
        self.classes = tuple(classes)
        self.labels = torch.tensor([label for _, label in self.samples], dtype=torch.int64)
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.mean = tuple(mean)
        self.std = tuple(std)
        # The recipe behind the transforms ('cifar', 'imagenet', 'none') and the output size, so
        # the GPU and DALI loaders can apply the same preprocessing their own way.
        self.style = style
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        path, label = self.samples[index]
        image = read_rgb(path)
        if seed is None:
            return self.eval_transform(image), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.train_transform(image), label

    def take(self, indices) -> "FolderDataset":
        """The samples at `indices`, with the same transforms."""
        return FolderDataset([self.samples[int(i)] for i in indices], self.classes,
                             self.train_transform, self.eval_transform, self.mean, self.std,
                             self.style, self.image_size)
