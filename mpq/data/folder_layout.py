"""Finding and checking an ImageFolder layout: root/train/<class>/* and root/val|test/<class>/*.

A wrong path or a half-copied dataset should fail at once with one line saying what is wrong,
not after an hour of training or deep inside torchvision.
"""
from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

TEST_SPLIT_NAMES = ("val", "test")


def is_image_folder(root) -> bool:
    """Whether root has a train/ folder and a val/ or test/ folder."""
    root = Path(root)
    return (root / "train").is_dir() and any((root / n).is_dir() for n in TEST_SPLIT_NAMES)


def split_dirs(root) -> tuple[Path, Path]:
    """(train_dir, test_dir) under root; val/ is preferred over test/ when both exist."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ValueError(f"dataset.root does not exist or is not a folder: {root}")
    train = root / "train"
    if not train.is_dir():
        raise ValueError(f"no train/ folder in dataset root {root}")
    for name in TEST_SPLIT_NAMES:
        if (root / name).is_dir():
            return train, root / name
    raise ValueError(f"no val/ or test/ folder in dataset root {root}")


def class_names(directory: Path) -> list[str]:
    """Sorted class folder names, ImageFolder's label order."""
    names = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
    if not names:
        raise ValueError(f"no class folders in {directory}")
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
            raise ValueError(f"class folder has no images: {directory / name}")
    return folder.samples, classes


def class_folders(root) -> tuple[Path, Path, list[str]]:
    """(train_dir, test_dir, classes) from folder names alone (no image is opened), checking that
    there are at least two classes and that both splits have the same ones."""
    train_dir, test_dir = split_dirs(root)
    classes = class_names(train_dir)
    if len(classes) < 2:   # usually all images in one folder; would advise model.num_classes: 1
        raise ValueError(f"{train_dir} has one class folder ({classes[0]}/); a classifier needs at least 2: "
                         f"put each class's images in its own folder, {train_dir}/<class>/<image>")
    test_classes = class_names(test_dir)
    if test_classes != classes:
        only_train = sorted(set(classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(classes))
        raise ValueError(f"class folders differ between {train_dir} and {test_dir}: "
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
        raise ValueError(f"cannot read image {path}: {err}") from err
