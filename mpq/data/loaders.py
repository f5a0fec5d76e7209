"""make_loader: reproducible batches (x float32 NCHW normalised, y int64) from any of our datasets.

The order and augmentation of a training epoch depend only on (seed, epoch), so a run resumed at
epoch k sees exactly the batches an uninterrupted run would have seen.

Three implementations behind one call, chosen by `dataset.loader` (see `choose`):
  torch  in-memory batches for tensor datasets, a torch DataLoader with workers for image files
  gpu    small datasets resident on the device as uint8, augmented there (device_loader.py)
  dali   ImageFolder JPEGs through NVIDIA DALI (dali_loader.py)
All give the same labels in the same order and the same preprocessing recipe. Under DDP
(mpq.distributed) each rank gets a disjoint shard and batch_size / world items per batch.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch.utils.data import DataLoader, Sampler

from .imagefolder import FolderDataset
from .seeding import generator
from .tensor_dataset import TensorImageDataset
from ..errors import InputError

_MAX_SEED = 2**62
_KEPT_LOADERS = 4   # DataLoaders with live workers kept for reuse across epochs
_AUG_STREAM = 7_919  # per-rank augmentation stream of the in-memory loader when sharded
LOADER_CHOICES = ("auto", "torch", "gpu", "dali")
# auto holds an ImageFolder decoded in memory only up to this many bytes of uint8 pixels.
RESIDENT_LIMIT_BYTES = 8 * 2**30
# Process-wide defaults set once by the stage runtime from the config (device, dataset.loader).
_CONFIGURED = {"kind": "auto", "device": torch.device("cpu")}


def configure(kind: str | None = None, device=None) -> None:
    """Set the loader kind and device that make_loader uses when the caller does not pass them."""
    if kind is not None:
        if kind not in LOADER_CHOICES:
            raise InputError(f"dataset.loader: unknown loader {kind!r}; choose one of "
                             f"{', '.join(LOADER_CHOICES)}")
        _CONFIGURED["kind"] = kind
    if device is not None:
        _CONFIGURED["device"] = torch.device(device)


def choose(dataset, kind: str, device: torch.device) -> str:
    """The loader that serves `dataset`: 'torch', 'gpu' or 'dali'.

    auto: dali for ImageFolder data on CUDA when DALI imports, gpu for in-memory (and small
    CIFAR-style ImageFolder) data on CUDA, torch otherwise; on CPU, gpu (the images decoded once
    into host memory) for a small CIFAR-style ImageFolder, torch otherwise. That is the fastest
    each time: decoding 50,000 CIFAR JPEGs once costs less than one epoch of a DataLoader whose
    workers decode every image again and take cores from the training (bench/RESULTS.md, 41x).
    """
    from . import dali_loader, device_loader

    if kind not in LOADER_CHOICES:
        raise InputError(f"dataset.loader: unknown loader {kind!r}; choose one of {', '.join(LOADER_CHOICES)}")
    if kind == "auto":
        folder = isinstance(dataset, FolderDataset)
        small_folder = folder and device_loader.supports(dataset) \
            and _decoded_bytes(dataset) <= RESIDENT_LIMIT_BYTES
        if device.type != "cuda":
            return "gpu" if small_folder else "torch"
        if folder and dali_loader.supports(dataset) and dali_loader.available():
            return "dali"
        return "gpu" if small_folder or isinstance(dataset, TensorImageDataset) else "torch"
    if kind == "dali" and isinstance(dataset, TensorImageDataset):
        return "gpu" if device.type == "cuda" else "torch"   # nothing to decode: in-memory data
    if kind in ("gpu", "dali") and not isinstance(dataset, (FolderDataset, TensorImageDataset)):
        return "torch"   # a generic map-style dataset (e.g. a Subset): only a DataLoader can read it
    return kind


def _decoded_bytes(dataset: FolderDataset) -> int:
    return len(dataset) * 3 * int(dataset.image_size) ** 2


def make_loader(dataset, batch_size: int, train: bool, seed: int = 0, workers: int = 0,
                epoch: int = 0, drop_last: bool | None = None, device=None, kind: str | None = None,
                shard: bool | None = None):
    """An iterable of (x, y) batches on `device`, with len().

    train=True shuffles and augments from a generator seeded by (seed, epoch); train=False keeps
    the dataset order and the evaluation transform. drop_last defaults to dropping the partial
    last batch in training only (a batch of one breaks BatchNorm), and never drops everything.
    In-memory datasets ignore `workers`. device and kind default to the process-wide settings
    (`configure`); shard defaults to splitting the data across DDP ranks when distributed (the
    loader's `sharded` then tells evaluate() to all-reduce its counts).
    """
    from .. import distributed

    if int(batch_size) <= 0:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    device = torch.device(device) if device is not None else _CONFIGURED["device"]
    kind = choose(dataset, kind or _CONFIGURED["kind"], device)
    world = distributed.world_size() if shard is None or shard else 1
    place = (distributed.rank(), world) if world > 1 else (0, 1)
    if world > 1:
        batch_size = max(1, int(batch_size) // world)   # the config's batch_size is the global batch
        per_rank = len(dataset) // world
    else:
        per_rank = len(dataset)
    if drop_last is None:
        drop_last = bool(train) and per_rank > batch_size
    if kind == "gpu":
        from .device_loader import DeviceLoader

        return DeviceLoader(dataset, int(batch_size), bool(train), seed, epoch, drop_last, device,
                            place, workers)
    if kind == "dali":
        from .dali_loader import DaliLoader

        return DaliLoader(dataset, int(batch_size), bool(train), seed, epoch, drop_last, device,
                          place, workers)
    if isinstance(dataset, TensorImageDataset):
        return InMemoryLoader(dataset, int(batch_size), bool(train), seed, epoch, drop_last,
                              device, place)
    return FileLoader(dataset, int(batch_size), bool(train), seed, int(workers), epoch,
                      drop_last, device, place)


def shard_order(order: list | torch.Tensor, train: bool, place: tuple[int, int]):
    """This rank's items of an epoch's order: every world-th one, after dropping the remainder in
    training (equal step counts on every rank, as DDP needs)."""
    rank, world = place
    if world == 1:
        return order
    n = len(order)
    return (order[:n - n % world] if train else order)[rank::world]


class InMemoryLoader:
    """Batches indexed straight out of a TensorImageDataset, augmented a batch at a time."""

    def __init__(self, dataset: TensorImageDataset, batch_size: int, train: bool, seed: int,
                 epoch: int, drop_last: bool, device: torch.device, place=(0, 1)):
        self.dataset, self.batch_size, self.train = dataset, batch_size, train
        self.seed, self.epoch, self.drop_last, self.device = seed, epoch, drop_last, device
        self.place, self.sharded = place, place[1] > 1
        self.pin = device.type == "cuda"

    def __len__(self) -> int:
        n = len(shard_order(range(len(self.dataset)), self.train, self.place))
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        n = len(self.dataset)
        rng = generator(self.seed, self.epoch) if self.train else None
        order = torch.randperm(n, generator=rng) if self.train else torch.arange(n)
        if self.sharded:
            order = shard_order(order, self.train, self.place)
            rng = generator(self.seed, self.epoch, _AUG_STREAM, self.place[0]) if self.train else None
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            x, y = self.dataset.batch(order[start:start + self.batch_size], rng)
            if self.pin:
                x, y = x.pin_memory(), y.pin_memory()
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


class EpochSampler(Sampler):
    """Dataset order for one epoch, set just before iterating so a DataLoader can be reused.

    In training it yields (index, sample_seed) for FolderDataset, whose augmentation then
    depends on the seed only and not on which worker process loads the sample.
    """

    def __init__(self, size: int, train: bool, seeded_items: bool, place=(0, 1)):
        self.size, self.train, self.seeded_items, self.place = size, train, seeded_items, place
        self.seed, self.epoch = 0, 0

    def __len__(self) -> int:
        return len(shard_order(range(self.size), self.train, self.place))

    def __iter__(self):
        """Like a DistributedSampler when sharded: one global order, every rank its slice."""
        if not self.train:
            return iter(shard_order(list(range(self.size)), False, self.place))
        rng = generator(self.seed, self.epoch)
        order = torch.randperm(self.size, generator=rng).tolist()
        if not self.seeded_items:
            return iter(shard_order(order, True, self.place))
        seeds = torch.randint(0, _MAX_SEED, (self.size,), generator=rng).tolist()
        return iter(shard_order(list(zip(order, seeds)), True, self.place))


class FileLoader:
    """A torch DataLoader over a file-backed (or any map-style) dataset.

    With workers, the DataLoader and its persistent worker processes are kept and reused by
    later calls for the same dataset and settings (the last few only), so a new epoch does not
    start new processes. Two iterations of loaders sharing one DataLoader must not overlap.
    """

    _kept: OrderedDict = OrderedDict()

    def __init__(self, dataset, batch_size: int, train: bool, seed: int, workers: int,
                 epoch: int, drop_last: bool, device: torch.device, place=(0, 1)):
        self.seed, self.epoch, self.device = seed, epoch, device
        self.sharded = place[1] > 1
        self.loader, self.sampler = self._dataloader(dataset, batch_size, train, workers,
                                                     drop_last, device.type == "cuda", place)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.sampler.seed, self.sampler.epoch = self.seed, self.epoch
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    @classmethod
    def _dataloader(cls, dataset, batch_size, train, workers, drop_last, pin, place):
        key = (id(dataset), batch_size, train, workers, drop_last, pin, place)
        if key in cls._kept:
            cls._kept.move_to_end(key)
            return cls._kept[key][1:]
        sampler = EpochSampler(len(dataset), train, isinstance(dataset, FolderDataset), place)
        loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                            num_workers=workers, drop_last=drop_last, pin_memory=pin,
                            persistent_workers=workers > 0)
        if workers > 0:
            # The entry holds the dataset itself, so its id() cannot be reused while kept.
            cls._kept[key] = (dataset, loader, sampler)
            while len(cls._kept) > _KEPT_LOADERS:
                cls._kept.popitem(last=False)
        return loader, sampler
