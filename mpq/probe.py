"""One eval-mode forward with temporary hooks: how layers are discovered and statistics taken."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def probe_forward(model: nn.Module, x: torch.Tensor, hooks: list) -> None:
    """Run model(x) in eval mode, then remove `hooks` (handles) and restore the train/eval mode,
    also when the forward raises, so a probe never leaves a hook or a mode change behind."""
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
