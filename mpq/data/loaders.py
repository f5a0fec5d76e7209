"""make_loader: reproducible batches (x float32 NCHW normalised, y int64) from any of our datasets.

The order and augmentation of a training epoch depend only on (seed, epoch), so a run resumed at
epoch k sees exactly the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch.utils.data import DataLoader, Sampler

from .folder_dataset import FolderDataset
from .seeding import generator
from .tensor_dataset import TensorImageDataset

_MAX_SEED = 2**62
_KEPT_LOADERS = 4   # DataLoaders with live workers kept for reuse across epochs


def make_loader(dataset, batch_size: int, train: bool, seed: int = 0, workers: int = 0,
                epoch: int = 0, drop_last: bool | None = None, device="cpu"):
    """An iterable of (x, y) batches on `device`, with len().

    train=True shuffles and augments from a generator seeded by (seed, epoch); train=False keeps
    the dataset order and the evaluation transform. drop_last defaults to dropping the partial
    last batch in training only (a batch of one breaks BatchNorm), and never drops everything.
    In-memory datasets ignore `workers`.
    """
    if int(batch_size) <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if drop_last is None:
        drop_last = bool(train) and len(dataset) > batch_size
    device = torch.device(device)
    if isinstance(dataset, TensorImageDataset):
        return InMemoryLoader(dataset, int(batch_size), bool(train), seed, epoch, drop_last,
                              device)
    return FileLoader(dataset, int(batch_size), bool(train), seed, int(workers), epoch,
                      drop_last, device)


class InMemoryLoader:
    """Batches indexed straight out of a TensorImageDataset, augmented a batch at a time."""

    def __init__(self, dataset: TensorImageDataset, batch_size: int, train: bool, seed: int,
                 epoch: int, drop_last: bool, device: torch.device):
        self.dataset, self.batch_size, self.train = dataset, batch_size, train
        self.seed, self.epoch, self.drop_last, self.device = seed, epoch, drop_last, device

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        n = len(self.dataset)
        rng = generator(self.seed, self.epoch) if self.train else None
        order = torch.randperm(n, generator=rng) if self.train else torch.arange(n)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            x, y = self.dataset.batch(order[start:start + self.batch_size], rng)
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


class EpochSampler(Sampler):
    """Dataset order for one epoch, set just before iterating so a DataLoader can be reused.

    In training it yields (index, sample_seed) for FolderDataset, whose augmentation then
    depends on the seed only and not on which worker process loads the sample.
    """

    def __init__(self, size: int, train: bool, seeded_items: bool):
        self.size, self.train, self.seeded_items = size, train, seeded_items
        self.seed, self.epoch = 0, 0

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        if not self.train:
            return iter(range(self.size))
        rng = generator(self.seed, self.epoch)
        order = torch.randperm(self.size, generator=rng).tolist()
        if not self.seeded_items:
            return iter(order)
        seeds = torch.randint(0, _MAX_SEED, (self.size,), generator=rng).tolist()
        return iter(zip(order, seeds))


class FileLoader:
    """A torch DataLoader over a file-backed (or any map-style) dataset.

    With workers, the DataLoader and its persistent worker processes are kept and reused by
    later calls for the same dataset and settings (the last few only), so a new epoch does not
    start new processes. Two iterations of loaders sharing one DataLoader must not overlap.
    """

    _kept: OrderedDict = OrderedDict()

    def __init__(self, dataset, batch_size: int, train: bool, seed: int, workers: int,
                 epoch: int, drop_last: bool, device: torch.device):
        self.seed, self.epoch, self.device = seed, epoch, device
        self.loader, self.sampler = self._dataloader(dataset, batch_size, train, workers,
                                                     drop_last, device.type == "cuda")

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.sampler.seed, self.sampler.epoch = self.seed, self.epoch
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    @classmethod
    def _dataloader(cls, dataset, batch_size, train, workers, drop_last, pin):
        key = (id(dataset), batch_size, train, workers, drop_last, pin)
        if key in cls._kept:
            cls._kept.move_to_end(key)
            return cls._kept[key][1:]
        sampler = EpochSampler(len(dataset), train, isinstance(dataset, FolderDataset))
        loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                            num_workers=workers, drop_last=drop_last, pin_memory=pin,
                            persistent_workers=workers > 0)
        if workers > 0:
            # The entry holds the dataset itself, so its id() cannot be reused while kept.
            cls._kept[key] = (dataset, loader, sampler)
            while len(cls._kept) > _KEPT_LOADERS:
                cls._kept.popitem(last=False)
        return loader, sampler
