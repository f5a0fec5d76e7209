"""Drop-in quantized Conv2d / Linear: the float layer plus a weight and an input quantizer."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .lsq import LsqQuantizer


class _QuantMixin:
    """Shared bit-setting for quantized layers; `quan_a` is None where the input stays float."""

    quan_w: LsqQuantizer
    quan_a: LsqQuantizer | None

    def set_bits(self, w_bits: int | None, a_bits: int | None) -> None:
        self.quan_w.set_bits(w_bits)
        if self.quan_a is not None:
            self.quan_a.set_bits(a_bits)

    @property
    def bits(self) -> tuple[int | None, int | None]:
        return self.quan_w.bits, (self.quan_a.bits if self.quan_a is not None else None)

    def _quant_input(self, x):
        return x if self.quan_a is None else self.quan_a(x)


class QuantConv2d(_QuantMixin, nn.Conv2d):
    """Conv2d whose weight and input pass through LSQ; bias, dilation and groups are kept."""

    def __init__(self, conv: nn.Conv2d, quan_w: LsqQuantizer, quan_a: LsqQuantizer | None):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                         conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                         conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
        self.weight = conv.weight
        self.bias = conv.bias
        self.quan_w, self.quan_a = quan_w, quan_a

    def forward(self, x):
        return self._conv_forward(self._quant_input(x), self.quan_w(self.weight), self.bias)


class QuantLinear(_QuantMixin, nn.Linear):
    """Linear whose weight and input pass through LSQ."""

    def __init__(self, linear: nn.Linear, quan_w: LsqQuantizer, quan_a: LsqQuantizer | None):
        super().__init__(linear.in_features, linear.out_features, linear.bias is not None,
                         device=linear.weight.device, dtype=linear.weight.dtype)
        self.weight = linear.weight
        self.bias = linear.bias
        self.quan_w, self.quan_a = quan_w, quan_a

    def forward(self, x):
        return F.linear(self._quant_input(x), self.quan_w(self.weight), self.bias)


QUANT_LAYERS = (QuantConv2d, QuantLinear)
