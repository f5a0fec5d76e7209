"""Training-epoch throughput of the three loaders (torch, gpu, dali) on one ImageFolder, side by side.

Iterates a training epoch (shuffle + augmentation + normalisation, batches delivered on the
device) without a model, after one warm-up epoch, and prints images/s and the ratio to torch.
The gpu loader's one-time decode (first epoch) is reported separately.

    python bench/loaders.py                       # CIFAR-10 JPEGs from ../shared/data, 10k images
    python bench/loaders.py --root DIR --images 0 --workers 8 --batch 256
"""
from __future__ import annotations

import argparse
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mpq.data import make_loader, subset  # noqa: E402
from mpq.data import dali_loader  # noqa: E402
from mpq.data.imagefolder import build_folder  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def folder_root(root: str | None) -> Path:
    if root:
        return Path(root)
    if not SHARED.is_file():
        raise SystemExit(f"no --root given and {SHARED} is absent")
    out = Path(tempfile.gettempdir()) / "mpq-bench-cifar10"
    if not (out / "train").is_dir():
        with tarfile.open(SHARED) as tar:
            tar.extractall(out, filter="data")
    return out


def epoch_rate(dataset, kind: str, batch: int, workers: int, device, epoch: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = 0
    for x, y in make_loader(dataset, batch, train=True, seed=0, epoch=epoch, workers=workers,
                            device=device, kind=kind):
        n += y.numel()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return n / seconds, n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=None, help="ImageFolder root (default: CIFAR-10 JPEGs from ../shared)")
    ap.add_argument("--images", type=int, default=10_000, help="training images used (0: all)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--augment", default="cifar", choices=["cifar", "imagenet"])
    args = ap.parse_args()
    device = torch.device(args.device)
    data = build_folder(folder_root(args.root), augment=args.augment)
    train = subset(data.train, args.images, 0) if args.images else data.train
    kinds = ["torch", "gpu"] if args.augment == "cifar" else ["torch"]
    if dali_loader.available():
        kinds.append("dali")
    print(f"{len(train)} images {data.image_size}px, batch {args.batch}, workers {args.workers}, "
          f"device {device}")
    rates = {}
    for kind in kinds:
        first, _ = epoch_rate(train, kind, args.batch, args.workers, device, epoch=0)
        rates[kind], n = epoch_rate(train, kind, args.batch, args.workers, device, epoch=1)
        extra = f"  (first epoch incl. decode/start-up: {first:,.0f} img/s)"
        print(f"{kind:6s} {rates[kind]:>12,.0f} img/s  x{rates[kind] / rates['torch']:.2f} vs torch{extra}")


if __name__ == "__main__":
    main()
