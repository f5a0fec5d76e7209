"""Datasets stored as image files in ImageFolder layout, read per epoch through a DataLoader.

Layout: root/train/<class>/* and root/val|test/<class>/*. A wrong path or a half-copied dataset
should fail at once with one line saying what is wrong, not after an hour of training or deep
inside torchvision.

The same training images are needed both augmented (training) and plain (search scoring,
BN statistics), so FolderDataset chooses the transform per access instead of fixing it per
dataset. Training accesses carry a per-sample seed, which makes augmentation reproducible
whatever the number of DataLoader workers.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from . import options
from .bundle import DataBundle
from .transforms import folder_transforms, resolve_style
from ..errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_SIZE = 224
TEST_SPLIT_NAMES = ("val", "test")


# ------------------------------------------------------------------------------ folder layout

def is_image_folder(root) -> bool:
    """Whether root has a train/ folder and a val/ or test/ folder."""
    root = Path(root)
    return (root / "train").is_dir() and any((root / n).is_dir() for n in TEST_SPLIT_NAMES)


def split_dirs(root) -> tuple[Path, Path]:
    """(train_dir, test_dir) under root; val/ is preferred over test/ when both exist."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"dataset.root does not exist or is not a folder: {root}")
    train = root / "train"
    if not train.is_dir():
        raise InputError(f"no train/ folder in dataset root {root}")
    for name in TEST_SPLIT_NAMES:
        if (root / name).is_dir():
            return train, root / name
    raise InputError(f"no val/ or test/ folder in dataset root {root}")


def class_names(directory: Path) -> list[str]:
    """Sorted class folder names, ImageFolder's label order."""
    names = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
    if not names:
        raise InputError(f"no class folders in {directory}")
    return names


def scan(directory: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """(samples as (path, label), classes) of one split, every class holding at least one image."""
    from torchvision.datasets import ImageFolder  # lazy: importing torchvision takes seconds

    classes = class_names(directory)
    folder = ImageFolder(str(directory), allow_empty=True)
    counts = [0] * len(classes)
    for _, label in folder.samples:
        counts[label] += 1
    for name, count in zip(classes, counts):
        if count == 0:
            raise InputError(f"class folder has no images: {directory / name}")
    return folder.samples, classes


def class_folders(root) -> tuple[Path, Path, list[str]]:
    """(train_dir, test_dir, classes) from folder names alone (no image is opened), checking that
    there are at least two classes and that both splits have the same ones."""
    train_dir, test_dir = split_dirs(root)
    classes = class_names(train_dir)
    if len(classes) < 2:   # usually all images in one folder; would advise model.num_classes: 1
        raise InputError(f"{train_dir} has one class folder ({classes[0]}/); a classifier needs at least 2: "
                         f"put each class's images in its own folder, {train_dir}/<class>/<image>")
    test_classes = class_names(test_dir)
    if test_classes != classes:
        only_train = sorted(set(classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(classes))
        raise InputError(f"class folders differ between {train_dir} and {test_dir}: "
                         f"only in train {only_train}, only in {test_dir.name} {only_test}")
    return train_dir, test_dir, classes


def scan_splits(root) -> tuple[list, list, list[str]]:
    """(train samples, test samples, classes), checking both splits have the same classes."""
    train_dir, test_dir, classes = class_folders(root)
    train, _ = scan(train_dir)
    test, _ = scan(test_dir)
    return train, test, classes


def native_size(path: str) -> int:
    """The longer side in pixels of one image (reads the header only)."""
    try:
        with Image.open(path) as image:
            return max(image.size)
    except OSError as err:
        raise InputError(f"cannot read image {path}: {err}") from err


# ------------------------------------------------------------------------------------ dataset

def read_rgb(path: str) -> Image.Image:
    """The image at path as RGB; an unreadable file is a ValueError naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise InputError(f"cannot read image {path}: {err}") from err


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


# ------------------------------------------------------------------------- train/test bundles

def build_folder(root, *, image_size: int | None = None, augment: str = "auto",
                 mean=IMAGENET_MEAN, std=IMAGENET_STD) -> DataBundle:
    """Train/test FolderDatasets; the recipe follows the image size unless `augment` forces it.

    Without an image_size, small images are used at their own size and photos at 224 px.
    """
    train, test, classes = scan_splits(root)
    native = native_size(train[0][0])
    style = resolve_style(augment, native)
    if image_size is None:
        image_size = IMAGENET_SIZE if style == "imagenet" else native
    train_tf, eval_tf = folder_transforms(style, image_size, mean, std)

    def part(samples):
        return FolderDataset(samples, classes, train_tf, eval_tf, mean, std, style, image_size)

    return DataBundle(part(train), part(test), num_classes=len(classes), image_size=image_size,
                      mean=tuple(mean), std=tuple(std), classes=tuple(classes))


def build_imagefolder(cfg: dict) -> DataBundle:
    """root/train and root/val (or test); ImageNet statistics unless mean/std are given."""
    return build_folder(options.required(cfg, "root", "imagefolder"),
                        image_size=options.integer(cfg, "image_size", None),
                        augment=str(cfg.get("augment") or "auto"),
                        mean=options.triple(cfg, "mean", IMAGENET_MEAN),
                        std=options.triple(cfg, "std", IMAGENET_STD))
