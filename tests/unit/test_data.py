"""Datasets, loaders and splits on real data: sklearn digits, tiny ImageFolders, CIFAR-10 JPEGs."""
from __future__ import annotations

import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mpq.data import DataBundle, build_data, make_loader, split_holdout, subset
from mpq.data.batch_augment import PadCropFlip
from mpq.data.splits import holdout_indices
from mpq.data.tensor_dataset import TensorImageDataset

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CIFAR_JPEG = SHARED_DATA / "cifar10-jpeg.tar.gz"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return build_data({"name": "digits", "root": None, "image_size": 16, "batch_size": 128,
                       "workers": 2, "loader": "auto", "download": False})


def batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def with_ids(ds: TensorImageDataset) -> TensorImageDataset:
    """The same images labelled 0..N-1, so a loader's labels tell which items it served."""
    return TensorImageDataset(ds.images, torch.arange(len(ds)), ds.mean, ds.std, ds.augment)


def assert_stratified(part_labels, all_labels):
    """Each class's count in the part is within one item of its proportional share."""
    total, counts = Counter(all_labels.tolist()), Counter(part_labels.tolist())
    for cls, n in total.items():
        share = len(part_labels) * n / len(all_labels)
        assert abs(counts[cls] - share) <= 1, (cls, counts[cls], share)


# ---------------------------------------------------------------- digits

def test_digits_split_sizes_and_stratification(digits):
    assert len(digits.train) + len(digits.test) == 1797
    assert len(digits.test) == round(0.2 * 1797)
    assert (digits.num_classes, digits.image_size) == (10, 16)
    every = torch.cat([digits.train.labels, digits.test.labels])
    assert_stratified(digits.test.labels, every)
    assert_stratified(digits.train.labels, every)


def test_digits_split_is_fixed_whatever_the_global_seeds(digits):
    torch.manual_seed(123)
    again = build_data({"name": "digits"})
    assert torch.equal(again.test.images, digits.test.images)
    assert torch.equal(again.test.labels, digits.test.labels)
    assert torch.equal(again.train.labels, digits.train.labels)


def test_digits_table_is_sklearns():
    from sklearn.datasets import load_digits

    from mpq.data.digits import load_digits_tensors

    images, labels = load_digits_tensors()
    raw = load_digits()
    assert torch.equal(images[:, 0] * 16, torch.tensor(raw.images, dtype=torch.float32))
    assert torch.equal(labels, torch.tensor(raw.target))


def test_digits_shapes_and_normalisation(digits):
    x, y = next(iter(make_loader(digits.train, 4096, train=False)))
    assert x.shape == (len(digits.train), 3, 16, 16) and x.dtype == torch.float32
    assert y.dtype == torch.int64
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    small = build_data({"name": "digits", "image_size": 8})
    assert next(iter(make_loader(small.test, 8, train=False)))[0].shape == (8, 3, 8, 8)


def test_train_loader_reproducible_per_seed_and_epoch(digits):
    first = batches(make_loader(digits.train, 128, train=True, seed=0, epoch=0))
    again = batches(make_loader(digits.train, 128, train=True, seed=0, epoch=0))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    next_epoch = batches(make_loader(digits.train, 128, train=True, seed=0, epoch=1))
    other_seed = batches(make_loader(digits.train, 128, train=True, seed=1, epoch=0))
    assert not torch.equal(first[0][1], next_epoch[0][1])
    assert not torch.equal(first[0][1], other_seed[0][1])
    assert len(first) == len(make_loader(digits.train, 128, train=True)) == len(digits.train) // 128


def test_train_loader_augments_and_sees_every_item_once(digits):
    ids = with_ids(digits.train)
    loader = make_loader(ids, 128, train=True, seed=3, epoch=2, drop_last=False)
    seen = torch.cat([y for _, y in loader])
    assert len(loader) == -(-len(ids) // 128)
    assert torch.equal(seen.sort().values, torch.arange(len(ids)))
    assert not torch.equal(seen, torch.arange(len(ids)))          # shuffled
    x, y = next(iter(make_loader(ids, 64, train=True, seed=3)))
    plain, _ = ids.batch(y)
    assert not torch.equal(x, plain)                               # translated


def test_eval_loader_keeps_order(digits):
    ids = with_ids(digits.test)
    loader = make_loader(ids, 128, train=False, seed=5, epoch=7)
    assert len(loader) == 3
    assert torch.equal(torch.cat([y for _, y in loader]), torch.arange(len(ids)))
    a, b = batches(loader), batches(make_loader(ids, 128, train=False))
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))


@pytest.mark.parametrize("pad,flip", [(2, False), (4, True), (0, True)])
def test_batch_augment_matches_per_sample_crop_and_flip(pad, flip):
    images = torch.randint(0, 256, (64, 3, 12, 12), dtype=torch.uint8)
    out = PadCropFlip(pad, flip)(images, torch.Generator().manual_seed(9))
    rng = torch.Generator().manual_seed(9)
    dy = torch.randint(0, 2 * pad + 1, (64,), generator=rng)
    dx = torch.randint(0, 2 * pad + 1, (64,), generator=rng)
    flips = torch.rand(64, generator=rng) < 0.5 if flip else torch.zeros(64, dtype=torch.bool)
    padded = F.pad(images, (pad,) * 4)
    for i in range(64):
        crop = padded[i, :, dy[i]:dy[i] + 12, dx[i]:dx[i] + 12]
        assert torch.equal(out[i], crop.flip(2) if flips[i] else crop)


# ---------------------------------------------------------------- subset / split_holdout

def test_subset_is_deterministic(digits):
    a, b = subset(digits.train, 100, seed=4), subset(digits.train, 100, seed=4)
    assert len(a) == 100 and torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(subset(digits.train, 100, seed=5).labels, a.labels)
    assert len(subset(digits.train, 10**6, seed=0)) == len(digits.train)
    with pytest.raises(ValueError, match="positive"):
        subset(digits.train, 0, seed=0)


def test_split_holdout_is_deterministic_stratified_and_disjoint(digits):
    rest, holdout = split_holdout(digits.train, 0.25, seed=1)
    assert len(holdout) == round(0.25 * len(digits.train))
    assert len(rest) + len(holdout) == len(digits.train)
    assert_stratified(holdout.labels, digits.train.labels)
    again_rest, again_holdout = split_holdout(digits.train, 0.25, seed=1)
    assert torch.equal(holdout.images, again_holdout.images)
    assert not torch.equal(split_holdout(digits.train, 0.25, seed=2)[1].labels, holdout.labels)
    kept, held = holdout_indices(len(digits.train), digits.train.labels, 0.25, seed=1)
    assert torch.equal(torch.cat([kept, held]).sort().values, torch.arange(len(digits.train)))
    with pytest.raises(ValueError, match="fraction"):
        split_holdout(digits.train, 1.0, seed=0)


def test_split_holdout_without_labels_falls_back_to_random():
    items = [(torch.zeros(1), i) for i in range(20)]
    rest, holdout = split_holdout(items, 0.5, seed=0)
    assert len(rest) == len(holdout) == 10
    assert {y for _, y in rest}.isdisjoint({y for _, y in holdout})


# ---------------------------------------------------------------- image folders

def write_image(path: Path, size: int = 40, value: int = 0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value, 255 - value, 128)).save(path)


def make_folder(root: Path, classes=("dog", "cat", "eel"), train=4, val=2, size=40) -> Path:
    for split, count in (("train", train), ("val", val)):
        for c, name in enumerate(classes):
            for i in range(count):
                suffix = "png" if i % 2 else "jpg"
                write_image(root / split / name / f"{i}.{suffix}", size, 40 * c + i)
    return root


def test_imagefolder_labels_follow_sorted_class_names(tmp_path):
    data = build_data({"name": "imagefolder", "root": str(make_folder(tmp_path))})
    assert data.classes == ("cat", "dog", "eel") and data.num_classes == 3
    assert data.image_size == 40                                   # small: native size
    for path, label in data.train.samples + data.test.samples:
        assert label == data.classes.index(Path(path).parent.name)
    assert sorted(Counter(data.test.labels.tolist()).items()) == [(0, 2), (1, 2), (2, 2)]


def test_imagefolder_batches(tmp_path):
    data = build_data({"name": "imagefolder", "root": str(make_folder(tmp_path)),
                       "image_size": 32})
    train = make_loader(data.train, 5, train=True, seed=0)
    assert len(train) == 2                                          # 12 images, partial dropped
    x, y = next(iter(train))
    assert x.shape == (5, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    evaluation = batches(make_loader(data.test, 4, train=False))
    assert [len(y) for _, y in evaluation] == [4, 2]
    assert torch.equal(torch.cat([y for _, y in evaluation]), data.test.labels)


def test_imagefolder_train_loader_reproducible_with_workers(tmp_path):
    data = build_data({"name": "imagefolder", "root": str(make_folder(tmp_path))})
    inline = batches(make_loader(data.train, 4, train=True, seed=1, epoch=3))
    workers = batches(make_loader(data.train, 4, train=True, seed=1, epoch=3, workers=2))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
               for a, b in zip(inline, workers))
    other = batches(make_loader(data.train, 4, train=True, seed=1, epoch=4, workers=2))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(inline, other))


def test_imagefolder_recipe_follows_image_size(tmp_path):
    big = build_data({"name": "imagefolder", "root": str(make_folder(tmp_path, size=80)),
                      "image_size": 48})
    assert next(iter(make_loader(big.test, 6, train=False)))[0].shape == (6, 3, 48, 48)
    assert "RandomResizedCrop" in repr(big.train.train_transform)
    forced = build_data({"name": "imagefolder", "root": str(tmp_path), "augment": "cifar"})
    assert forced.image_size == 80 and "RandomCrop" in repr(forced.train.train_transform)
    with pytest.raises(ValueError, match="augment"):
        build_data({"name": "imagefolder", "root": str(tmp_path), "augment": "heavy"})


def test_imagefolder_errors(tmp_path):
    def error(root):
        with pytest.raises(ValueError) as info:
            build_data({"name": "imagefolder", "root": str(root)})
        return str(info.value)

    assert "does not exist" in error(tmp_path / "nowhere")
    (tmp_path / "bare" / "train").mkdir(parents=True)
    (tmp_path / "bare" / "val").mkdir()
    assert "no class folders" in error(tmp_path / "bare")
    differ = make_folder(tmp_path / "differ")
    write_image(differ / "val" / "fox" / "0.png")
    message = error(differ)
    assert "differ" in message and "fox" in message
    empty = make_folder(tmp_path / "empty")
    (empty / "train" / "gnu").mkdir()
    (empty / "val" / "gnu").mkdir()
    (empty / "train" / "gnu" / "notes.txt").write_text("not an image")
    assert "no images" in error(empty) and "gnu" in error(empty)
    with pytest.raises(ValueError, match="root"):
        build_data({"name": "imagefolder"})


def test_unreadable_image_names_the_file(tmp_path):
    root = make_folder(tmp_path)
    bad = root / "val" / "cat" / "9.png"
    bad.write_bytes(b"this is not a png")
    data = build_data({"name": "imagefolder", "root": str(root)})
    with pytest.raises(ValueError, match="9.png"):
        batches(make_loader(data.test, 8, train=False))


# ---------------------------------------------------------------- config and other datasets

def test_unknown_or_missing_name_lists_choices():
    with pytest.raises(ValueError, match="digits, cifar10, cifar100, imagefolder, synthetic"):
        build_data({"name": "mnist"})
    with pytest.raises(ValueError, match="dataset.name"):
        build_data({"root": "x"})
    with pytest.raises(ValueError, match="image_size"):
        build_data({"name": "digits", "image_size": "big"})


def test_synthetic_sizes():
    data = build_data({"name": "synthetic", "image_size": 24, "num_classes": 7,
                       "train_size": 50, "test_size": 20})
    assert (len(data.train), len(data.test), data.num_classes) == (50, 20, 7)
    x, y = next(iter(make_loader(data.train, 16, train=True)))
    assert x.shape == (16, 3, 24, 24) and int(y.max()) < 7


def test_cifar_without_files_and_without_download_says_so(tmp_path):
    with pytest.raises(ValueError, match="download"):
        build_data({"name": "cifar10", "root": str(tmp_path), "download": "false"})


@pytest.mark.skipif(not CIFAR_JPEG.exists(), reason="../shared/data/cifar10-jpeg.tar.gz absent")
def test_cifar10_jpeg_folder_labels_follow_readme_order(tmp_path):
    per_class, wanted = 2, {}
    with tarfile.open(CIFAR_JPEG, "r|gz") as archive:
        for member in archive:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3:
                continue
            key = (parts[0], parts[1])
            if wanted.get(key, 0) < per_class:
                wanted[key] = wanted.get(key, 0) + 1
                target = tmp_path.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.extractfile(member).read())
    data = build_data({"name": "cifar10", "root": str(tmp_path)})
    assert data.classes == CIFAR10_CLASSES and data.num_classes == 10
    assert data.image_size == 32 and data.mean[0] == pytest.approx(0.4914)
    for path, label in data.train.samples + data.test.samples:
        assert CIFAR10_CLASSES[label] == Path(path).parent.name
    x, y = next(iter(make_loader(data.train, 8, train=True)))
    assert x.shape == (8, 3, 32, 32)
