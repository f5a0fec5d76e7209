"""The `dali` loader: ImageFolder data through NVIDIA DALI (optional extra `mpq[dali]`).

JPEGs are read by fn.readers.file (sharded across DDP ranks with shard_id/num_shards) and decoded
on the GPU (`mixed`), or on the CPU when there is no GPU (`device_id=None`). The recipe matches
the torch transforms of the same FolderDataset: ImageNet style is random-resized crop + flip for
training and resize (size*256/224) + center crop for evaluation; CIFAR style is resize + random
pad-crop + flip, and a plain resize for evaluation. Resampling filters differ slightly from PIL's,
so pixels are close to, not equal to, the torch loader's; labels and order are the same.

The file order of a training epoch is a permutation drawn from (seed, epoch) as in the other
loaders (the reader itself does not shuffle), so a resumed run sees the same epochs. Only the
random crops come from DALI's own generator, seeded from (seed, epoch, rank).
"""
from __future__ import annotations

import math

import torch

from .imagefolder import FolderDataset
from .seeding import derive_seed, generator
from ..errors import InputError

_SEED_MAX = 2**31 - 1


def available() -> bool:
    """Whether DALI and its PyTorch plugin import."""
    try:
        import nvidia.dali  # noqa: F401
        from nvidia.dali.plugin import pytorch  # noqa: F401
    except Exception:  # ImportError, or a broken CUDA library behind it
        return False
    return True


def supports(dataset) -> bool:
    return isinstance(dataset, FolderDataset) and dataset.image_size is not None


class DaliLoader:
    """One pass over a FolderDataset (one epoch), yielding normalised float NCHW and int64 labels."""

    def __init__(self, dataset: FolderDataset, batch_size: int, train: bool, seed: int, epoch: int,
                 drop_last: bool, device: torch.device, shard=(0, 1), workers: int = 0):
        if not supports(dataset):
            raise InputError("loader 'dali' reads ImageFolder datasets only (dataset.name imagefolder, "
                             "or cifar10/cifar100 given as train/ + test/ folders)")
        if not available():
            raise InputError("loader 'dali' needs NVIDIA DALI: pip install 'mpq[dali]' "
                             "(or set dataset.loader: torch)")
        self.dataset, self.batch_size, self.train = dataset, batch_size, train
        self.seed, self.epoch, self.drop_last, self.device = seed, epoch, drop_last, device
        self.shard, self.workers = shard, workers
        self.sharded = shard[1] > 1
        self.files, self.labels = self._epoch_files()

    def _epoch_files(self):
        samples = self.dataset.samples
        n, world = len(samples), self.shard[1]
        if self.train:
            order = torch.randperm(n, generator=generator(self.seed, self.epoch)).tolist()
            order = order[:n - n % world]   # equal shards: every rank runs the same number of steps
        else:
            order = list(range(n))
        return [samples[i][0] for i in order], [int(samples[i][1]) for i in order]

    def _shard_size(self) -> int:
        rank, world = self.shard
        n = len(self.files)
        # readers.file gives shard i the items [floor(i*n/N), floor((i+1)*n/N)).
        return (rank + 1) * n // world - rank * n // world

    def __len__(self) -> int:
        n = self._shard_size()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        if len(self) == 0:
            return
        pipe = self._pipeline()
        pipe.build()
        policy = LastBatchPolicy.DROP if self.drop_last else LastBatchPolicy.PARTIAL
        batches = DALIGenericIterator(pipe, ["x", "y"], reader_name="reader", last_batch_policy=policy,
                                      auto_reset=False)
        try:
            for i, out in enumerate(batches):
                if i >= len(self):
                    break
                x, y = out[0]["x"], out[0]["y"]
                yield (x.to(self.device, non_blocking=True),
                       y.reshape(-1).to(device=self.device, dtype=torch.int64, non_blocking=True))
        finally:
            del batches, pipe

    def _pipeline(self):
        from nvidia.dali import fn, pipeline_def, types

        gpu = self.device.type == "cuda"
        device_id = (self.device.index if self.device.index is not None else torch.cuda.current_device()) \
            if gpu else None
        rank, world = self.shard
        size = int(self.dataset.image_size)
        style = self.dataset.style or "imagenet"
        mean = [255.0 * m for m in self.dataset.mean]
        std = [255.0 * s for s in self.dataset.std]
        files, labels, train = self.files, self.labels, self.train

        @pipeline_def(batch_size=self.batch_size, num_threads=max(1, int(self.workers) or 2),
                      device_id=device_id, seed=derive_seed(self.seed, self.epoch, rank) % _SEED_MAX,
                      prefetch_queue_depth=2)
        def pipeline():
            jpegs, label = fn.readers.file(files=files, labels=labels, shard_id=rank, num_shards=world,
                                           random_shuffle=False, pad_last_batch=not train,
                                           name="reader")
            decode_on = "mixed" if gpu else "cpu"
            mirror = fn.random.coin_flip() if train and style != "none" else 0
            if style == "imagenet":
                if train:
                    images = fn.decoders.image_random_crop(jpegs, device=decode_on, output_type=types.RGB)
                    images = fn.resize(images, resize_x=size, resize_y=size)
                else:
                    images = fn.decoders.image(jpegs, device=decode_on, output_type=types.RGB)
                    images = fn.resize(images, resize_shorter=round(size * 256 / 224))
            else:
                images = fn.decoders.image(jpegs, device=decode_on, output_type=types.RGB)
                images = fn.resize(images, resize_x=size, resize_y=size)
                if train and style == "cifar":
                    pad = max(1, size // 8)
                    shift = fn.random.uniform(values=[float(v) for v in range(-pad, pad + 1)], shape=2)
                    images = fn.slice(images, shift, [float(size), float(size)], axis_names="HW",
                                      out_of_bounds_policy="pad", fill_values=0)
            images = fn.crop_mirror_normalize(images, crop=(size, size), mirror=mirror, mean=mean, std=std,
                                              dtype=types.FLOAT, output_layout="CHW")
            if gpu:
                label = label.gpu()
            return images, label

        return pipeline()
