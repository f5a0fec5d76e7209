"""OMPQ units (docs/methods/ompq.md): layers that share one weight bit-width and one feature.

Inside a block, a unit is one main-path conv and its feature is what the next main conv reads
(conv-BN-ReLU output); the block's last main conv, joined by its shortcut conv, has the block
output as feature. The 'ptq' layout adds the stem (its conv-BN-ReLU output, before any pooling)
and the classifier (the logits); the 'qat' layout leaves both out, since they stay at 8 bits.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..quant.blocks import find_blocks
from ..quant.convert import split_layers
from ..errors import InputError

MODES = ("qat", "ptq")


@dataclass(frozen=True)
class Unit:
    name: str                  # the unit's defining layer
    layers: tuple[str, ...]    # every conv/linear whose weight bits follow the unit
    source: str                # module whose input or output is the unit's feature
    port: str                  # 'input' | 'output'


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InputError(f"OMPQ mode {mode!r} is unknown; use 'qat' or 'ptq'")
    return mode


def _block_units(block) -> list[Unit]:
    units = [Unit(conv, (conv,), nxt, "input") for conv, nxt in zip(block.main, block.main[1:])]
    last = block.main[-1]
    return units + [Unit(last, (last, *block.shortcut), block.name, "output")]


def _stem_unit(model: nn.Module, stem: str) -> Unit:
    relu = getattr(model, "relu", None)
    if not isinstance(relu, nn.ReLU):
        raise InputError(f"cannot find the stem's activation: {type(model).__name__} has no top-level "
                         "'relu' and its stem is in no block; OMPQ units cover the ResNets and MobileNetV2")
    return Unit(stem, (stem,), "relu", "output")


def ompq_units(model: nn.Module, mode: str = "ptq") -> list[Unit]:
    """Units in network order; raises if they do not cover the model's layers exactly once."""
    check_mode(mode)
    stem, searchable, classifier = split_layers(model)
    blocks = find_blocks(model)
    units = [] if any(stem in b.layers for b in blocks) else [_stem_unit(model, stem)]
    for block in blocks:
        units += _block_units(block)
    units.append(Unit(classifier, (classifier,), classifier, "output"))
    covered = [layer for u in units for layer in u.layers]
    expected = [stem, *searchable, classifier]
    if sorted(covered) != sorted(expected):
        loose = sorted(set(expected) - set(covered))
        raise InputError(f"OMPQ units do not cover every layer exactly once (outside any block: "
                         f"{loose[:3]}); OMPQ units cover the ResNets and MobileNetV2")
    if mode == "qat":
        units = [u for u in units if stem not in u.layers and classifier not in u.layers]
    return units
