"""The `gpu` loader: a small dataset decoded once into a uint8 tensor on the device, batched there.

Indexing, pad-crop-flip and normalisation run as torch ops on the device, with the randomness
drawn from a generator on that device: no per-batch host work and no host-to-device copies. On a
CPU device it yields exactly the batches of the in-memory `torch` loader (same generator stream).
ImageFolder data qualifies when its recipe is CIFAR-style (or none): images are decoded and
resized once as the evaluation transform would, and the augmentation is the same pad-crop-flip.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch

from .batch_augment import PadCropFlip
from .imagefolder import FolderDataset, read_rgb
from .seeding import derive_seed
from .tensor_dataset import TensorImageDataset
from ..errors import InputError

_KEPT = 4                 # resident datasets kept per process (decoding/copying happens once)
_AUG_STREAM = 7_919       # per-rank augmentation stream when the epoch is sharded
_resident: OrderedDict = OrderedDict()


def _keep(key, make):
    if key in _resident:
        _resident.move_to_end(key)
        return _resident[key][1]
    value = make()
    _resident[key] = value
    while len(_resident) > _KEPT:
        _resident.popitem(last=False)
    return value[1]


def supports(dataset) -> bool:
    """Whether the gpu loader can serve this dataset with the same preprocessing as torch."""
    if isinstance(dataset, TensorImageDataset):
        return True
    return (isinstance(dataset, FolderDataset) and dataset.style in ("cifar", "none")
            and dataset.image_size is not None)


def decode_folder(dataset: FolderDataset, workers: int = 0) -> TensorImageDataset:
    """All images of a CIFAR-style FolderDataset as one uint8 NCHW tensor at image_size."""
    if not supports(dataset):
        raise InputError("loader 'gpu' holds small images on the device with CIFAR-style "
                         f"augmentation; this ImageFolder uses the {dataset.style!r} recipe "
                         "(random-resized crop): use dataset.loader torch or dali")
    from torch.utils.data import DataLoader

    size = int(dataset.image_size)
    decoder = _Decoded(dataset.samples, size)
    chunks = DataLoader(decoder, batch_size=256, num_workers=max(0, int(workers)))
    images = torch.cat([c for c in chunks]) if len(decoder) else torch.zeros(0, 3, size, size,
                                                                                 dtype=torch.uint8)
    pad = max(1, size // 8)
    augment = PadCropFlip(pad=pad, flip=True) if dataset.style == "cifar" else PadCropFlip()
    return TensorImageDataset(images, dataset.labels, dataset.mean, dataset.std, augment, dataset.classes)


class _Decoded(torch.utils.data.Dataset):
    """One image file decoded and resized like the eval transform (PIL bilinear), as uint8 CHW."""

    def __init__(self, samples, size: int):
        self.samples, self.size = samples, size

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        from PIL import Image

        image = read_rgb(self.samples[i][0])
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.BILINEAR)
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def resident(dataset, device: torch.device, workers: int = 0) -> TensorImageDataset:
    """The dataset as a TensorImageDataset on `device`, built once per process and dataset."""
    key = (id(dataset), str(device))

    def make():
        tensors = dataset if isinstance(dataset, TensorImageDataset) else decode_folder(dataset, workers)
        return dataset, tensors.to(device)   # the entry holds the dataset: its id() stays unique

    return _keep(key, make)


class DeviceLoader:
    """Batches of a device-resident dataset; order and augmentation depend on (seed, epoch) only.

    `shard` is (rank, world): each rank takes every world-th item of the epoch's order, after
    dropping the remainder in training so that every rank runs the same number of steps.
    """

    def __init__(self, dataset, batch_size: int, train: bool, seed: int, epoch: int,
                 drop_last: bool, device: torch.device, shard=(0, 1), workers: int = 0):
        self.data = resident(dataset, device, workers)
        self.batch_size, self.train, self.seed, self.epoch = batch_size, train, seed, epoch
        self.drop_last, self.device, self.shard = drop_last, device, shard
        self.sharded = shard[1] > 1

    def _count(self) -> int:
        rank, world = self.shard
        n = len(self.data)
        if world == 1:
            return n
        return n // world if self.train else len(range(rank, n, world))

    def __len__(self) -> int:
        n = self._count()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        n = len(self.data)
        rank, world = self.shard
        rng = None
        if self.train:
            rng = torch.Generator(device=self.device).manual_seed(derive_seed(self.seed, self.epoch))
            order = torch.randperm(n, generator=rng, device=self.device)
        else:
            order = torch.arange(n, device=self.device)
        if world > 1:
            order = (order[:n - n % world] if self.train else order)[rank::world]
            if rng is not None:
                rng = torch.Generator(device=self.device).manual_seed(
                    derive_seed(self.seed, self.epoch, _AUG_STREAM, rank))
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield self.data.batch(order[start:start + self.batch_size], rng)
