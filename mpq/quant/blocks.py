"""The blocks of a zoo model: the groups OMPQ measures features of and PTQ reconstructs together.

A block is the outermost ResNet BasicBlock / Bottleneck, MobileNetV2 InvertedResidual or
conv-norm-activation module. Its convs split into the main path, in execution order, and the
shortcut (a `downsample` conv), which runs beside the main path's last conv.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..models.cifar_resnet import BasicBlock as CifarBasicBlock
from ..models.torchvision_classes import loaded_classes

SHORTCUT_NAMES = ("downsample", "shortcut")


@dataclass(frozen=True)
class Block:
    name: str
    main: tuple[str, ...]       # main-path conv names, execution order
    shortcut: tuple[str, ...]   # shortcut conv names (join the last main conv)

    @property
    def layers(self) -> tuple[str, ...]:
        return (*self.main, *self.shortcut)


def find_blocks(model: nn.Module) -> list[Block]:
    """Outermost blocks in registration order (which is execution order for the zoo)."""
    blocks, claimed = [], []
    block_types = (CifarBasicBlock, *loaded_classes("models.resnet.BasicBlock", "models.resnet.Bottleneck",
                                                    "models.mobilenetv2.InvertedResidual",
                                                    "ops.misc.Conv2dNormActivation"))
    for name, module in model.named_modules():
        if not isinstance(module, block_types) or any(name.startswith(c + ".") for c in claimed):
            continue
        claimed.append(name)
        main, shortcut = [], []
        for sub, m in module.named_modules():
            if isinstance(m, nn.Conv2d):
                side = shortcut if sub.split(".")[0] in SHORTCUT_NAMES else main
                side.append(f"{name}.{sub}" if name else sub)
        if main:
            blocks.append(Block(name, tuple(main), tuple(shortcut)))
    return blocks
