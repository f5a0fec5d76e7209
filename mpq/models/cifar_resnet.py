"""CIFAR-style ResNets (He et al. 2016, section 4.2): three stages of widths 16/32/64, depth 6n+2.

Layer names follow torchvision (`conv1`, `bn1`, `layerK.i.convJ`, `downsample`, `fc`) so that
policies and accounting read the same for CIFAR and ImageNet models.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mpq.models.registry import register
from ..errors import InputError

STAGE_WIDTHS = (16, 32, 64)


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: strided subsampling plus zero channels, parameter-free.

    The identity channels sit in the middle (zeros split before and after), the layout used by the
    widely shared CIFAR-10 reference checkpoints, so their weights stay loadable after renaming.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if out_channels < in_channels:
            raise InputError("option-A shortcut cannot reduce channels")
        self.stride = stride
        self.pad_before = (out_channels - in_channels) // 2
        self.pad_after = out_channels - in_channels - self.pad_before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a shortcut; ReLU after the addition."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        # Registered after conv2 because it runs after conv2: registration order == execution order.
        self.downsample = _shortcut(in_channels, out_channels, stride, shortcut)
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + identity)


def _shortcut(in_channels: int, out_channels: int, stride: int, kind: str) -> nn.Module | None:
    if stride == 1 and in_channels == out_channels:
        return None
    if kind == "A":
        return ZeroPadShortcut(in_channels, out_channels, stride)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class CifarResNet(nn.Module):
    """Stem conv, three stages of `blocks_per_stage` BasicBlocks, global average pool, `fc`."""

    def __init__(self, blocks_per_stage: int, num_classes: int, shortcut: str = "A"):
        super().__init__()
        if shortcut not in ("A", "B"):
            raise InputError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        self.conv1 = _conv3x3(3, STAGE_WIDTHS[0])
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        in_channels = STAGE_WIDTHS[0]
        for index, width in enumerate(STAGE_WIDTHS, start=1):
            first_stride = 1 if index == 1 else 2
            blocks = []
            for block_index in range(blocks_per_stage):
                stride = first_stride if block_index == 0 else 1
                blocks.append(BasicBlock(in_channels, width, stride, shortcut))
                in_channels = width
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(STAGE_WIDTHS[-1], num_classes)
        self.signed_inputs: frozenset[str] = frozenset()
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                # fan_in keeps the initial logits O(1) however few classes there are.
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _depth_to_blocks(depth: int) -> int:
    if (depth - 2) % 6 or depth < 8:
        raise InputError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
    return (depth - 2) // 6


def _register_depth(depth: int) -> None:
    def build(num_classes: int, shortcut: str = "A") -> CifarResNet:
        return CifarResNet(_depth_to_blocks(depth), num_classes, shortcut)

    build.__name__ = f"resnet{depth}"
    build.__doc__ = f"CIFAR ResNet-{depth}; shortcut 'A' (zero-pad) or 'B' (1x1 conv + BN)."
    register(f"resnet{depth}")(build)


for _depth in (8, 20, 32, 56):
    _register_depth(_depth)
