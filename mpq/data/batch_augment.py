"""Augmentation of a whole batch of in-memory images at once (random translation and flip).

Per-sample PIL transforms cost tens of microseconds per image in Python; on tiny images that
dominates training time. Here pad-crop-flip is one gather over the batch, which keeps the
embedded workflow fast on a laptop CPU, and the same code runs on a GPU tensor.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class PadCropFlip:
    """Zero-pad by `pad`, crop back to the original size at a random offset, maybe flip.

    Equivalent per sample to torchvision's RandomCrop(size, padding=pad) followed by
    RandomHorizontalFlip(); all randomness comes from the generator passed in.
    """

    pad: int = 0
    flip: bool = False

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.pad <= 0 and not self.flip:
            return images
        n, c, h, w = images.shape
        p = max(self.pad, 0)
        # Random draws on the generator's device (the GPU loader keeps everything on the GPU).
        on = generator.device
        dy = torch.randint(0, 2 * p + 1, (n, 1, 1), generator=generator, device=on)
        dx = torch.randint(0, 2 * p + 1, (n, 1, 1), generator=generator, device=on)
        cols = torch.arange(w, device=on).expand(n, 1, w)
        if self.flip:
            flipped = torch.rand(n, 1, 1, generator=generator, device=on) < 0.5
            cols = torch.where(flipped, w - 1 - cols, cols)
        rows = torch.arange(h, device=on).view(1, h, 1)
        # Flat positions in the padded image: one gather does translation and flip together.
        where = ((dy + rows) * (w + 2 * p) + dx + cols).view(n, 1, h * w).to(images.device)
        padded = F.pad(images, (p, p, p, p)) if p else images
        out = padded.reshape(n, c, -1).gather(2, where.expand(n, c, h * w))
        return out.view(n, c, h, w)
