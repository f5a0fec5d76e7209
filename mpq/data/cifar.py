"""CIFAR-10/100: torchvision's files held in memory as uint8, or an ImageFolder copy of them.

50,000 images of 32x32x3 are 150 MB as uint8: holding them in memory and augmenting whole
batches is much faster than decoding per sample. An ImageFolder copy (e.g. the JPEG export
used on machines without internet) goes through the file loader with the same recipe.
"""
from __future__ import annotations

from pathlib import Path

import torch

from . import options, pixels
from .batch_augment import PadCropFlip
from .bundle import DataBundle
from .imagefolder import build_folder, is_image_folder
from .tensor_dataset import TensorImageDataset
from ..errors import InputError

NATIVE_SIZE = 32
STATS = {  # per-channel mean and std of each training set, in [0, 1] units
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def build_cifar(cfg: dict, name: str) -> DataBundle:
    """The torchvision dataset `name` under dataset.root, or an ImageFolder layout there."""
    root = Path(options.required(cfg, "root", name)).expanduser()
    size = options.integer(cfg, "image_size", NATIVE_SIZE)
    mean, std = STATS[name]
    if is_image_folder(root):
        return build_folder(root, image_size=size, augment=str(cfg.get("augment") or "cifar"),
                            mean=mean, std=std)
    download = options.boolean(cfg, "download", True)
    train, classes = _load(name, root, train=True, download=download)
    test, _ = _load(name, root, train=False, download=download)
    augment = PadCropFlip(pad=max(1, size // 8), flip=True)

    def part(images_labels):
        images, labels = images_labels
        return TensorImageDataset(pixels.resize(images, size), labels, mean, std, augment, classes)

    return DataBundle(part(train), part(test), num_classes=len(classes), image_size=size,
                      mean=mean, std=std, classes=tuple(classes))


def _load(name: str, root: Path, train: bool, download: bool):
    """((uint8 NCHW images, int64 labels), class names) of one split through torchvision."""
    from torchvision import datasets

    factory = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        ds = factory(str(root), train=train, download=download)
    except RuntimeError as err:
        if download:
            raise
        raise InputError(f"no {name} found under dataset.root {root} (neither torchvision's "
                         f"files nor train/ + test/ folders); set dataset.download: true "
                         f"to fetch it") from err
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return (images, torch.tensor(ds.targets, dtype=torch.int64)), list(ds.classes)
