"""Fold eval-mode BatchNorm into the conv it follows (docs/methods/ptq.md).

PTQ quantises the folded weights, so the quantiser sees exactly the weights inference uses and no
BN statistics need re-estimating afterwards.
"""
from __future__ import annotations

import torch
from torch import nn

from .convert import conv_bn_pairs, replace_module
from ..errors import InputError


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """W' = W * g / s and b' = beta + (b - mu) * g / s with s = sqrt(var + eps), in place."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.mul_(scale.view(-1, *([1] * (conv.weight.dim() - 1))))
    conv.bias = nn.Parameter(bn.bias + (bias - bn.running_mean) * scale)


def fold_batchnorm(model: nn.Module, image_size: int, in_chans: int = 3) -> nn.Module:
    """Fold every BN that directly follows a conv and replace it by Identity (in place)."""
    for conv_name, bn_name in conv_bn_pairs(model, image_size, in_chans).items():
        bn = model.get_submodule(bn_name)
        if not isinstance(bn, nn.BatchNorm2d):
            raise InputError(f"{bn_name} is a {type(bn).__name__}; only plain BatchNorm2d can be folded")
        fold_conv_bn(model.get_submodule(conv_name), bn)
        replace_module(model, bn_name, nn.Identity())
    return model
