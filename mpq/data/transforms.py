"""Per-image torchvision pipelines for datasets read from files (ImageFolder layout).

Two recipes: CIFAR-style (pad-crop-flip at native size) for small images, where cropping a
random area would throw away too much, and ImageNet-style (random-resized crop) for photos.
"""
from __future__ import annotations
from ..errors import InputError

AUGMENT_CHOICES = ("auto", "cifar", "imagenet", "none")
SMALL_IMAGE_MAX = 64   # images up to this size (px, longer side) get the CIFAR recipe


def resolve_style(augment: str, native_size: int) -> str:
    """'cifar', 'imagenet' or 'none' for the config's `augment` and the images' size."""
    if augment not in AUGMENT_CHOICES:
        raise InputError(f"dataset.augment: unknown value {augment!r}; "
                         f"choose one of {', '.join(AUGMENT_CHOICES)}")
    if augment != "auto":
        return augment
    return "cifar" if native_size <= SMALL_IMAGE_MAX else "imagenet"


def folder_transforms(style: str, image_size: int, mean, std):
    """(train, eval) transforms producing normalised float32 CHW tensors of image_size."""
    from torchvision import transforms as T  # lazy: importing torchvision takes seconds

    finish = [T.ToTensor(), T.Normalize(mean, std)]
    if style == "imagenet":
        evaluate = [T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size)]
        train = [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()]
    else:
        evaluate = [T.Resize((image_size, image_size))]
        train = evaluate + [T.RandomCrop(image_size, padding=max(1, image_size // 8)),
                            T.RandomHorizontalFlip()]
        if style == "none":
            train = evaluate
    return T.Compose(train + finish), T.Compose(evaluate + finish)
