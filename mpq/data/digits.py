"""The embedded default dataset: scikit-learn's 8x8 handwritten digits (1,797 images, no download).

Real images small enough that the whole workflow runs in minutes on a laptop CPU, so the DAG,
the search methods and their comparisons can be exercised end to end without any download.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from ..config import section_defaults
from . import options, pixels
from .batch_augment import PadCropFlip
from .bundle import DataBundle
from .splits import holdout_indices
from .tensor_dataset import TensorImageDataset

SPLIT_SEED = 20_240_517   # fixed, so the test set is the same whatever the experiment seed
TEST_FRACTION = 0.2
MAX_PIXEL = 16.0          # load_digits pixels are counts 0..16


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 images as float (N, 1, 8, 8) in [0, 1] and their int64 labels."""
    table = _read_bundled_table()
    images = torch.tensor(table[:, :64], dtype=torch.float32).div_(MAX_PIXEL).view(-1, 1, 8, 8)
    return images, torch.tensor(table[:, 64], dtype=torch.int64)


def _read_bundled_table() -> np.ndarray:
    """scikit-learn's digits table (64 pixels + label per row).

    Importing sklearn takes about 3 s, paid by every stage process; the table is read straight
    from the file load_digits reads, falling back to load_digits if that file ever moves.
    """
    spec = importlib.util.find_spec("sklearn")
    locations = (spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return np.loadtxt(path, delimiter=",")
    from sklearn.datasets import load_digits

    raw = load_digits()
    return np.concatenate([raw.data, raw.target[:, None]], axis=1)


def build_digits(cfg: dict) -> DataBundle:
    """Stratified 80/20 split, resized once to image_size, 3 channels, train-split statistics.

    Augmentation is a small random translation only: digits are not flip-invariant.
    """
    size = options.integer(cfg, "image_size", section_defaults("dataset", {"name": "digits"})["image_size"])
    images, labels = load_digits_tensors()
    images = pixels.resize(images, size).expand(-1, 3, -1, -1).contiguous()
    train_idx, test_idx = holdout_indices(len(labels), labels, TEST_FRACTION, SPLIT_SEED)
    mean, std = pixels.channel_stats(images[train_idx])
    augment = PadCropFlip(pad=max(1, size // 8), flip=False)
    classes = tuple(str(d) for d in range(10))

    def part(idx):
        return TensorImageDataset(images[idx], labels[idx], mean, std, augment, classes)

    return DataBundle(part(train_idx), part(test_idx), num_classes=10, image_size=size,
                      mean=mean, std=std, classes=classes)
