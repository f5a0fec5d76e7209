"""BatchNorm with one independent copy per bit configuration of its producing layer.

Keys are strings: "6" when keyed by one bit (LIMPQ, w == a during indicator training), "6_4" when
keyed by a (w-bit, a-bit) pair (RFQuant's grid).
"""
from __future__ import annotations

import copy

from torch import nn
from ..errors import InputError


def bn_key(w_bits: int, a_bits: int | None, keyed_by: str) -> str:
    if keyed_by == "bit":
        return str(w_bits)
    if keyed_by == "pair":
        return f"{w_bits}_{a_bits}"
    raise InputError(f"switchable BN is keyed by 'bit' or 'pair', not {keyed_by!r}")


class SwitchableBatchNorm2d(nn.Module):
    """Holds BN copies initialised from one float BN and routes through the active one."""

    def __init__(self, bn: nn.BatchNorm2d, keys: list[str]):
        super().__init__()
        if not keys:
            raise InputError("switchable BN needs at least one key")
        self.copies = nn.ModuleDict({k: copy.deepcopy(bn) for k in keys})
        self.active = keys[0]

    def set_key(self, key: str) -> None:
        if key not in self.copies:
            raise InputError(f"no BN copy for configuration {key!r} (have {list(self.copies)})")
        self.active = key

    @property
    def active_bn(self) -> nn.BatchNorm2d:
        return self.copies[self.active]

    def forward(self, x):
        return self.copies[self.active](x)

    def extra_repr(self) -> str:
        return f"keys={list(self.copies)}, active={self.active}"
