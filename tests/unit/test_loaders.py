"""The three loaders (torch, gpu, dali) behind make_loader: same labels, same preprocessing,
sharding across DDP ranks, and the single-process behaviour of mpq.distributed."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mpq import distributed
from mpq.data import build_data, make_loader
from mpq.data import dali_loader
from mpq.data.imagefolder import build_folder
from mpq.data.loaders import choose, configure
from mpq.data.tensor_dataset import TensorImageDataset

CLASSES = ("cat", "ant", "dog")   # deliberately unsorted: labels follow the sorted names
needs_dali = pytest.mark.skipif(not dali_loader.available(), reason="NVIDIA DALI is not installed")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny ImageFolder of 32x32 JPEGs (and one 40x28 image, which every loader resizes)."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for split, count in (("train", 7), ("val", 4)):
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                shape = (28, 40, 3) if (split, c, i) == ("train", 1, 0) else (32, 32, 3)
                pixels = rng.integers(0, 256, shape, dtype=np.uint8)
                pixels[..., c] = 40 * c + 30   # something class-dependent, as real data has
                Image.fromarray(pixels).save(root / split / name / f"{i:03d}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def cifar_style(folder):
    return build_folder(folder, augment="cifar", image_size=32)


@pytest.fixture(scope="module")
def digits():
    return build_data({"name": "digits", "image_size": 16})


def collect(loader):
    xs, ys = zip(*[(x.clone(), y.clone()) for x, y in loader])
    return torch.cat(xs), torch.cat(ys)


def kinds():
    return ["torch", "gpu"] + (["dali"] if dali_loader.available() else [])


@pytest.mark.parametrize("train", [False, True])
def test_all_loaders_yield_the_same_labels_for_one_imagefolder(cifar_style, train):
    labels = {}
    for kind in kinds():
        loader = make_loader(cifar_style.train, 4, train=train, seed=5, epoch=2, kind=kind)
        x, y = collect(loader)
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32), kind
        assert y.dtype == torch.int64 and len(loader) == (5 if train else 6), kind
        labels[kind] = y.tolist()
    assert len({tuple(v) for v in labels.values()}) == 1, labels
    if not train:   # label order = sorted folder names, file order within each class
        assert labels["torch"] == [0] * 7 + [1] * 7 + [2] * 7
    assert cifar_style.classes == ("ant", "cat", "dog")


def test_gpu_loader_has_the_torch_eval_preprocessing(cifar_style):
    ref, _ = collect(make_loader(cifar_style.test, 5, train=False, kind="torch"))
    gpu, _ = collect(make_loader(cifar_style.test, 5, train=False, kind="gpu"))
    torch.testing.assert_close(gpu, ref, atol=1e-6, rtol=0)


@needs_dali
def test_dali_eval_preprocessing_is_close_to_torch(cifar_style, folder):
    ref, _ = collect(make_loader(cifar_style.test, 5, train=False, kind="torch"))
    dali, _ = collect(make_loader(cifar_style.test, 5, train=False, kind="dali"))
    assert (dali - ref).abs().mean() < 0.02   # same JPEG decode, same normalisation
    photo = build_folder(folder, augment="imagenet", image_size=24)   # resize + center crop
    ref, y_ref = collect(make_loader(photo.test, 4, train=False, kind="torch"))
    dali, y = collect(make_loader(photo.test, 4, train=False, kind="dali"))
    assert torch.equal(y, y_ref) and dali.shape == ref.shape == (12, 3, 24, 24)
    assert (dali - ref).abs().mean() < 0.05   # bilinear filters differ slightly from PIL's


def test_gpu_loader_on_cpu_matches_in_memory_torch_loader_exactly(digits):
    for train in (False, True):
        ref = collect(make_loader(digits.train, 64, train=train, seed=1, epoch=3, kind="torch"))
        gpu = collect(make_loader(digits.train, 64, train=train, seed=1, epoch=3, kind="gpu"))
        assert torch.equal(ref[0], gpu[0]) and torch.equal(ref[1], gpu[1])


def test_training_augmentation_keeps_pad_crop_flip_semantics(cifar_style):
    """gpu augmentation of a folder: every image is a shifted (maybe flipped) copy of its eval view."""
    loader = make_loader(cifar_style.train, 21, train=True, seed=0, kind="gpu")
    x, _ = collect(loader)
    assert x.shape == (21, 3, 32, 32) and torch.isfinite(x).all()
    mean = torch.tensor(cifar_style.mean).view(1, 3, 1, 1)
    std = torch.tensor(cifar_style.std).view(1, 3, 1, 1)
    pixels = x * std + mean
    assert pixels.min() > -1e-5 and pixels.max() < 1 + 1e-5


def test_gpu_loader_refuses_imagenet_style_folders(folder):
    photo = build_folder(folder, augment="imagenet", image_size=24)
    with pytest.raises(ValueError, match="random-resized crop"):
        make_loader(photo.train, 4, train=True, kind="gpu")


def test_auto_choice(cifar_style, digits, folder):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose(digits.train, "auto", cpu) == "torch"          # already in memory
    assert choose(cifar_style.train, "auto", cpu) == "gpu"       # decoded once, in host memory
    assert choose(digits.train, "auto", cuda) == "gpu"
    expected = "dali" if dali_loader.available() else "gpu"
    assert choose(cifar_style.train, "auto", cuda) == expected
    photo = build_folder(folder, augment="imagenet", image_size=24)
    assert choose(photo.train, "auto", cuda) == ("dali" if dali_loader.available() else "torch")
    assert choose(digits.train, "dali", cpu) == "torch"   # nothing to decode
    with pytest.raises(ValueError, match="dataset.loader"):
        choose(digits.train, "fast", cpu)


def test_auto_keeps_large_folders_on_the_dataloader(cifar_style, monkeypatch):
    from mpq.data import loaders

    monkeypatch.setattr(loaders, "RESIDENT_LIMIT_BYTES", len(cifar_style.train) * 3 * 32 * 32 - 1)
    for device in ("cpu", "cuda"):
        assert choose(cifar_style.train, "auto", torch.device(device)) in ("torch", "dali")
    assert choose(cifar_style.train, "auto", torch.device("cpu")) == "torch"


def test_configure_sets_the_default_kind(digits):
    try:
        configure(kind="gpu")
        from mpq.data.device_loader import DeviceLoader

        assert isinstance(make_loader(digits.test, 32, train=False), DeviceLoader)
    finally:
        configure(kind="auto", device="cpu")


@pytest.mark.parametrize("kind", kinds())
@pytest.mark.parametrize("train", [False, True])
def test_ranks_get_disjoint_shards_that_cover_the_epoch(monkeypatch, cifar_style, digits, kind, train):
    for data in (digits, cifar_style):
        if kind == "dali" and data is digits:
            continue
        seen, lengths = [], []
        for rank in range(2):
            monkeypatch.setattr(distributed, "world_size", lambda: 2)
            monkeypatch.setattr(distributed, "rank", lambda r=rank: r)
            ds = TensorImageDataset(data.train.images, torch.arange(len(data.train)), data.train.mean,
                                    data.train.std, data.train.augment) if data is digits else data.train
            loader = make_loader(ds, 8, train=train, seed=3, epoch=1, kind=kind)
            assert loader.sharded
            _, y = collect(loader)
            lengths.append(len(loader))
            seen.append(y)
        n = len(data.train)
        together = torch.cat(seen)
        if train:   # equal step counts; per-rank batch = 8 / 2; the remainder is dropped
            assert lengths[0] == lengths[1]
            assert len(together) == 2 * ((n // 2) // 4 * 4)
        else:
            assert len(together) == n
        if data is digits:   # labels are item ids here: no item on both ranks
            assert len(set(together.tolist())) == len(together)


def test_distributed_helpers_are_no_ops_for_one_process():
    assert not distributed.is_initialized()
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    assert distributed.all_reduce_sum([1, 2.5]) == [1.0, 2.5]
    t = torch.ones(3)
    assert distributed.all_reduce_mean_(t) is t
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap(model, torch.device("cpu")) is model
    assert distributed.init("cpu") == torch.device("cpu")


def test_non_zero_rank_writes_nothing(monkeypatch, tmp_path):
    from mpq.io import atomic_torch_save, atomic_write_json

    monkeypatch.setenv("RANK", "1")
    assert not distributed.is_main()
    atomic_write_json(tmp_path / "m.json", {"a": 1})
    atomic_torch_save(tmp_path / "m.pt", {"a": 1})
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("RANK", "0")
    atomic_write_json(tmp_path / "m.json", {"a": 1})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 1}
