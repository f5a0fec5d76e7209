"""torchvision ImageNet architectures (ResNet-18, ResNet-50 v1.5, MobileNetV2) under zoo names."""
from __future__ import annotations

from typing import Callable

import torchvision
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual

from ..errors import InputError


def _build(tv_name: str, num_classes: int, pretrained: str | None, head_name: str) -> nn.Module:
    """Build a torchvision model, optionally with its published weights.

    torchvision only loads weights with their own class count, so a pretrained backbone asked for
    with another `num_classes` keeps the backbone and gets a freshly initialised classifier.
    """
    builder: Callable[..., nn.Module] = getattr(torchvision.models, tv_name)
    if pretrained is None:
        return builder(weights=None, num_classes=num_classes)
    weights = _weights(tv_name, pretrained)
    model = builder(weights=weights)
    if len(weights.meta["categories"]) != num_classes:
        _replace_classifier(model, head_name, num_classes)
    return model


def _weights(tv_name: str, pretrained: str):
    enum = torchvision.models.get_model_weights(tv_name)
    try:
        return enum[pretrained]
    except KeyError:
        known = ", ".join(member.name for member in enum)
        raise InputError(
            f"unknown pretrained weights {pretrained!r} for {tv_name}; known: {known}, DEFAULT"
        ) from None


def _replace_classifier(model: nn.Module, head_name: str, num_classes: int) -> None:
    parent_name, _, attr = head_name.rpartition(".")
    parent = model.get_submodule(parent_name)
    new = nn.Linear(getattr(parent, attr).in_features, num_classes)
    nn.init.normal_(new.weight, 0, 0.01)  # the init torchvision gives these heads
    nn.init.zeros_(new.bias)
    # Replacing an existing key keeps its position, so registration order is unchanged.
    setattr(parent, attr, new)


def mobilenet_v2_signed_inputs(model: nn.Module) -> frozenset[str]:
    """Layers fed by a linear bottleneck (no ReLU6), hence signed inputs.

    These are the expand 1x1 conv of every block with expansion t != 1 (such a block starts with a
    dense 1x1 conv; a t == 1 block starts with the depthwise conv) and the final 1x1 conv.
    """
    signed = set()
    for block_name, block in model.named_modules():
        if not isinstance(block, InvertedResidual):
            continue
        first_name, first = next(
            (name, m) for name, m in block.named_modules() if isinstance(m, nn.Conv2d)
        )
        if first.kernel_size == (1, 1) and first.groups == 1:
            signed.add(f"{block_name}.{first_name}")
    last_feature = len(model.features) - 1
    signed.add(f"features.{last_feature}.0")
    return frozenset(signed)


def resnet18(num_classes: int, pretrained: str | None = None) -> nn.Module:
    """torchvision ResNet-18; `pretrained` is a weights enum name such as "IMAGENET1K_V1"."""
    model = _build("resnet18", num_classes, pretrained, "fc")
    model.signed_inputs = frozenset()
    return model


def resnet50(num_classes: int, pretrained: str | None = None) -> nn.Module:
    """torchvision ResNet-50, which is v1.5 (stride in the 3x3 conv of each bottleneck)."""
    model = _build("resnet50", num_classes, pretrained, "fc")
    model.signed_inputs = frozenset()
    return model


def mobilenet_v2(num_classes: int, pretrained: str | None = None) -> nn.Module:
    """torchvision MobileNetV2, width 1.0."""
    model = _build("mobilenet_v2", num_classes, pretrained, "classifier.1")
    model.signed_inputs = mobilenet_v2_signed_inputs(model)
    return model
