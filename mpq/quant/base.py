"""The base every quantizer derives from. The bit-width rules they all share live in `mpq.bits`
(re-exported here), which needs no torch, so policy files load without it."""
from __future__ import annotations

from torch import nn

from ..bits import (BIT_RANGE, bit_range_text, check_bits, int_range, is_full_precision,  # noqa: F401
                    quantized_bits, supported_bits)

class Quantizer(nn.Module):
    """A module that quantizes one tensor at `bits` (None or >= 32: passes it through).

    Subclasses refuse the bit-widths they cannot run at by extending `_check_bits`.
    """

    bits: int | None = None

    @property
    def full_precision(self) -> bool:
        return is_full_precision(self.bits)

    def _check_bits(self, bits: int) -> None:
        check_bits(bits)

    def set_bits(self, bits: int | None) -> None:
        if not is_full_precision(bits):
            self._check_bits(bits)
        self.bits = bits
