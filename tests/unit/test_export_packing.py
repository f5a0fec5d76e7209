"""Sub-8-bit weight codes are packed b bits each in the npz export, and unpack to the same codes."""
import numpy as np
import pytest

from mpq.export.npz import pack_codes, unpack_codes
from mpq.export.quantized import ExportError


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7])
def test_packing_round_trips_every_code_and_takes_bits_per_code(bits):
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    rng = np.random.default_rng(bits)
    codes = rng.integers(qmin, qmax + 1, size=(16, 8, 3, 3)).astype(np.int8)
    codes.flat[0], codes.flat[1] = qmin, qmax   # both ends of the range
    packed = pack_codes(codes, bits, qmin)
    assert packed.dtype == np.uint8 and packed.size == -(-codes.size * bits // 8)
    np.testing.assert_array_equal(unpack_codes(packed, bits, qmin, codes.shape), codes)


def test_the_bit_order_is_the_documented_one():
    # two 3-bit codes above qmin -4: u = 1 (001) and 6 (110), LSB first -> bits 1,0,0, 0,1,1 -> 0b110001
    packed = pack_codes(np.array([-3, 2], dtype=np.int8), 3, -4)
    assert packed.tolist() == [0b110001]


def test_codes_outside_the_bits_are_refused():
    with pytest.raises(ExportError, match="exceed 2 bits"):
        pack_codes(np.array([0, 3], dtype=np.int8), 2, -2)
