"""The bit-width rules every quantizer shares, in one place and free of torch.

Which bit-widths exist (2..8), what full precision is (None or >= 32: values pass through), and
what integer grid a b-bit tensor has, so no quantizer restates them; a policy file is checked
against the same rules without importing torch.
"""
from __future__ import annotations

from .errors import InputError

BIT_RANGE = (2, 8)   # the integer bit-widths the quantizers implement


def supported_bits(bits) -> bool:
    """Whether `bits` is an integer bit-width within BIT_RANGE."""
    return BIT_RANGE[0] <= bits <= BIT_RANGE[1]


def bit_range_text() -> str:
    return f"{BIT_RANGE[0]}..{BIT_RANGE[1]}"


def is_full_precision(bits) -> bool:
    """None or >= 32 bits means the tensor passes through unquantized."""
    return bits is None or bits >= 32


def check_bits(bits) -> None:
    """Refuse a bit-width no quantizer implements (full precision is the caller's to allow)."""
    if not supported_bits(bits):
        raise InputError(f"bit-width {bits} is not supported; use {bit_range_text()} "
                         f"(None or 32 for full precision)")


def quantized_bits(bits) -> int | None:
    """None for full precision, else the checked bit-width as an int."""
    if is_full_precision(bits):
        return None
    check_bits(int(bits))
    return int(bits)


def int_range(bits: int, signed: bool, symmetric: bool = False) -> tuple[int, int]:
    """Integer grid [Qn, Qp] of a b-bit tensor: [0, 2^b - 1] unsigned, [-2^(b-1), 2^(b-1) - 1]
    signed, [-(2^(b-1) - 1), 2^(b-1) - 1] signed symmetric (docs/methods/lsq.md)."""
    check_bits(bits)
    bits = int(bits)
    if not signed:
        return 0, 2**bits - 1
    qp = 2 ** (bits - 1) - 1
    return (-qp if symmetric else -qp - 1), qp
