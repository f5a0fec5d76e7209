"""Datasets stored as image files in ImageFolder layout, read per epoch through a DataLoader."""
from __future__ import annotations

from . import options
from .bundle import DataBundle
from .folder_dataset import FolderDataset
from .folder_layout import native_size, scan_splits
from .transforms import folder_transforms, resolve_style

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_SIZE = 224


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
