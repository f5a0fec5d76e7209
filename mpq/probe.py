"""One no-grad forward with temporary hooks: how layers are discovered and statistics taken."""
from __future__ import annotations

import torch
from torch import nn
from .errors import InputError

BN_MODES = ("eval", "train")
_RUNNING = ("running_mean", "running_var", "num_batches_tracked")


def check_bn_mode(bn_mode: str) -> str:
    if bn_mode not in BN_MODES:
        raise InputError(f"bn_mode {bn_mode!r} is unknown; use 'eval' or 'train'")
    return bn_mode


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _running_stats(bns) -> list[dict]:
    """Copies of every BN's running buffers (None where the BN tracks none)."""
    return [{k: None if getattr(bn, k) is None else getattr(bn, k).clone() for k in _RUNNING} for bn in bns]


def _restore_running_stats(bns, saved) -> None:
    for bn, buffers in zip(bns, saved):
        for k, value in buffers.items():
            if value is not None:
                getattr(bn, k).copy_(value)


@torch.no_grad()
def probe_forward(model: nn.Module, x: torch.Tensor, hooks: list, bn_mode: str = "eval") -> None:
    """Run model(x) in eval mode, then remove `hooks` (handles) and restore every module's
    train/eval mode, also when the forward raises, so a probe never leaves a hook or a mode
    change behind.

    bn_mode 'train': BN layers normalise with the statistics of the batch `x` itself, as in a
    training forward, while every other module (dropout) stays in eval mode; the BN running
    statistics are put back afterwards, so the model's state is exactly as before.
    """
    check_bn_mode(bn_mode)
    modes = [(m, m.training) for m in model.modules()]
    bns = _batchnorms(model) if bn_mode == "train" else []
    saved = _running_stats(bns)
    model.eval()
    try:
        for bn in bns:
            bn.train()
        model(x)
    finally:
        for h in hooks:
            h.remove()
        _restore_running_stats(bns, saved)
        for m, training in modes:
            m.training = training
