"""Operations on whole in-memory image tensors (N, C, H, W): resizing once and channel statistics.

In-memory datasets store raw pixels, uint8 in [0, 255] or float in [0, 1]; normalisation happens
per batch so that padding during augmentation is black in pixel space, as with torchvision.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Raw pixels as float32 in [0, 1]."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize to size x size, keeping the dtype (uint8 is rounded back)."""
    if images.shape[-2:] == (size, size):
        return images
    out = F.interpolate(to_unit(images), size=(size, size), mode="bilinear",
                        align_corners=False, antialias=size < images.shape[-1])
    out = out.clamp_(0.0, 1.0)
    if images.dtype == torch.uint8:
        return out.mul_(255.0).round_().to(torch.uint8)
    return out


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of raw pixels, in [0, 1] units."""
    x = to_unit(images).transpose(0, 1).reshape(images.shape[1], -1).double()
    mean = x.mean(dim=1)
    std = x.std(dim=1, unbiased=False).clamp_min(1e-8)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
