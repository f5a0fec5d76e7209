"""Random images with random labels, for benchmarks that need data of a given shape, not meaning."""
from __future__ import annotations

import torch

from ..config import section_defaults
from . import pixels
from .batch_augment import PadCropFlip
from .bundle import DataBundle
from .seeding import generator
from .tensor_dataset import TensorImageDataset

SEED = 0   # fixed: the same "dataset" on every run
SHAPE_KEYS = ("image_size", "num_classes", "train_size", "test_size")   # defaults: the config schema's


def build_synthetic(cfg: dict) -> DataBundle:
    """uint8 noise images (3 x image_size^2) served like CIFAR (pad-crop-flip)."""
    filled = section_defaults("dataset", {**cfg, "name": "synthetic"})
    size, classes, n_train, n_test = (int(filled[key]) for key in SHAPE_KEYS)
    rng = generator(SEED)

    def draw(n):
        images = torch.randint(0, 256, (n, 3, size, size), generator=rng, dtype=torch.uint8)
        return images, torch.randint(0, classes, (n,), generator=rng)

    train, test = draw(n_train), draw(n_test)
    mean, std = pixels.channel_stats(train[0])
    augment = PadCropFlip(pad=max(1, size // 8), flip=True)
    names = tuple(str(c) for c in range(classes))
    return DataBundle(TensorImageDataset(*train, mean, std, augment, names),
                      TensorImageDataset(*test, mean, std, augment, names),
                      num_classes=classes, image_size=size, mean=mean, std=std, classes=names)
