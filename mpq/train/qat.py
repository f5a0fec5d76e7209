"""LSQ quantization-aware finetuning of a policy from the FP32 weights (specs/limpq.md section 7)."""
from __future__ import annotations

import logging

import torch
from torch import nn

from .fp32 import train_model
from .loop import recalibrate_bn

log = logging.getLogger("mpq")


@torch.no_grad()
def init_act_steps(model: nn.Module, x: torch.Tensor) -> None:
    """One training-mode forward so every activation quantizer sets its lazy initial step.

    BN layers are kept in eval mode so their running statistics are not touched.
    """
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    model(x)
    model.eval()


def finetune_lsq(model: nn.Module, data, recipe: dict, device, *, batch_size: int, seed: int,
                 workers: int) -> dict:
    """QAT for `recipe['epochs']` epochs (0 = quantize only), then BN re-estimation."""
    from ..data import make_loader

    model.to(device)
    first = next(iter(make_loader(data.train, batch_size, train=True, seed=seed, epoch=0, workers=workers)))
    init_act_steps(model, first[0].to(device))
    fit = {"epochs": 0}
    if int(recipe.get("epochs", 0)) > 0:
        fit = train_model(model, lambda e: make_loader(data.train, batch_size, train=True, seed=seed,
                                                       epoch=e, workers=workers),
                          recipe, device, what="finetune", label_smoothing=recipe.get("label_smoothing", 0.0))
    images = int(recipe.get("bn_recalibration_images", 6000))
    used = recalibrate_bn(model, make_loader(data.train, batch_size, train=True, seed=seed + 1, workers=workers),
                          device, images)
    log.info("BN re-estimated on %d training images", used)
    return {**fit, "bn_images": used}
