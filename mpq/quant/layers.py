"""Drop-in quantized Conv2d / Linear: the float layer plus a weight and an input quantizer.

Two ways to compute the same layer (docs/methods/lsq.md, "Quantized layers and the code domain"):
- fake quantization: conv(s_a * codes_a, s_w * codes_w), the quantizers' outputs as floats;
- code domain: s_a * s_w * conv(codes_a, codes_w). Under bf16 autocast only this one is exact:
  integer codes up to 256 are exact in bf16, `code * s` is not (bf16 keeps 8 significant bits),
  so the conv multiplies exact integers, accumulates in fp32 and the scales are applied after,
  in fp32 (the output stays fp32: on the grid).
The code domain is taken under autocast on the input's device, or always/never when a layer's
`code_domain` is True/False; it needs both quantizers to offer codes (CodeQuantizer).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from .base import Quantizer


@runtime_checkable
class CodeQuantizer(Protocol):
    """A quantizer whose output is scale * codes, offered to the layer separately.

    codes_and_scale(x) returns (codes, scale) or None (then the layer fake-quantizes):
    - codes: exact small integers (|code| <= 256) as fp32 tensors shaped like x.
    - scale: fp32, a scalar, or for weights one value per output channel shaped (C, 1, ...).
      Activation scales must be scalars. Zero must be code 0 (zero padding stays exact).
    The layer multiplies its output by the scales with autograd, so scale * codes must have the
    values and gradients of forward(x); how the gradient is split between codes and scale is the
    quantizer's choice. LSQ returns a detached step and puts the whole step gradient on the codes
    (d codes/dx = 1/s inside, d codes/ds = (round(u) - u)/s inside, Qn/s or Qp/s outside): the
    split c + s * dc/ds = c - u would subtract two large bf16 terms.
    E.g. LTQ: codes 0..K with scale scale2*2/K; L1 weights: odd integers with scale s_c/(2^n-1).
    """

    def codes_and_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None: ...


def codes_of(quantizer, x: torch.Tensor):
    """(codes, scale) from a quantizer that offers them (CodeQuantizer), else None.

    A quantizer with forward hooks (range init, probes) is called as a module instead, so that
    its hooks still see every input.
    """
    offer = getattr(quantizer, "codes_and_scale", None)
    if offer is None or quantizer._forward_hooks or quantizer._forward_pre_hooks:
        return None
    return offer(x)


def _channel_scale(scale: torch.Tensor, out_dim: int, ndim: int) -> torch.Tensor:
    """A per-output-channel weight scale (C, 1, ...) laid along dim `out_dim` of the output."""
    if scale.dim() == 0:
        return scale
    shape = [1] * ndim
    shape[out_dim] = -1
    return scale.reshape(shape)


class _QuantMixin:
    """Shared bit-setting and path choice for quantized layers; `quan_a` is None where the
    input stays float. `code_domain`: None = under autocast only, True = always, False = never."""

    quan_w: Quantizer
    quan_a: Quantizer | None
    code_domain: bool | None = None

    def set_bits(self, w_bits: int | None, a_bits: int | None) -> None:
        self.quan_w.set_bits(w_bits)
        if self.quan_a is not None:
            self.quan_a.set_bits(a_bits)

    @property
    def bits(self) -> tuple[int | None, int | None]:
        return self.quan_w.bits, (self.quan_a.bits if self.quan_a is not None else None)

    def _quant_input(self, x):
        return x if self.quan_a is None else self.quan_a(x)

    def _wants_codes(self, x: torch.Tensor) -> bool:
        if self.code_domain is not None:
            return self.code_domain
        return torch.is_autocast_enabled(x.device.type)

    def _codes(self, x: torch.Tensor):
        """((codes_a, s_a), (codes_w, s_w)) when the code-domain path applies, else None."""
        if self.quan_a is None or not self._wants_codes(x):
            return None
        act = codes_of(self.quan_a, x)
        if act is None:
            return None
        weight = codes_of(self.quan_w, self.weight)
        return None if weight is None else (act, weight)

    def _rescale(self, acc: torch.Tensor, scale: torch.Tensor, bias, channel_dim: int) -> torch.Tensor:
        """acc * scale + bias, in fp32: the output levels stay on the grid (integer * s_a * s_w);
        a bf16 output would round them again, and the next quantizer computes in fp32 anyway."""
        out = acc.to(torch.float32) * _channel_scale(scale, channel_dim, acc.dim())
        if bias is not None:
            out = out + _channel_scale(bias.to(torch.float32), channel_dim, acc.dim())
        return out


class QuantConv2d(_QuantMixin, nn.Conv2d):
    """Conv2d whose weight and input pass through LSQ; bias, dilation and groups are kept."""

    def __init__(self, conv: nn.Conv2d, quan_w: Quantizer, quan_a: Quantizer | None):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                         conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                         conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
        self.weight = conv.weight
        self.bias = conv.bias
        self.quan_w, self.quan_a = quan_w, quan_a

    def forward(self, x):
        codes = self._codes(x)
        if codes is None:
            return self._conv_forward(self._quant_input(x), self.quan_w(self.weight), self.bias)
        (ca, sa), (cw, sw) = codes
        return self._rescale(self._conv_forward(ca, cw, None), sa * sw.flatten(), self.bias, 1)


class QuantLinear(_QuantMixin, nn.Linear):
    """Linear whose weight and input pass through LSQ.

    fc_scale_trick (SAT, as the LIMPQ reference finetune does; docs/methods/lsq.md): in training
    the quantized weight is multiplied by f = 1 / (sqrt(out_features) * std(q_w)), in eval the
    bias is divided by f instead, so eval logits are the training-form logits divided by f.
    """

    fc_scale_trick: bool = False

    def __init__(self, linear: nn.Linear, quan_w: Quantizer, quan_a: Quantizer | None):
        super().__init__(linear.in_features, linear.out_features, linear.bias is not None,
                         device=linear.weight.device, dtype=linear.weight.dtype)
        self.weight = linear.weight
        self.bias = linear.bias
        self.quan_w, self.quan_a = quan_w, quan_a

    def _sat_factor(self, quantized_weight: torch.Tensor) -> torch.Tensor:
        """f = 1 / (sqrt(out_features) * std(q_w)), no gradient (unbiased std, as torch.std)."""
        return 1.0 / (self.out_features ** 0.5 * quantized_weight.detach().to(torch.float32).std())

    def _scaled(self, quantized_weight: torch.Tensor):
        """(weight multiplier or None, bias) after the fc_scale_trick."""
        if not self.fc_scale_trick:
            return None, self.bias
        f = self._sat_factor(quantized_weight)
        if self.training:
            return f, self.bias
        return None, (None if self.bias is None else self.bias / f)

    def forward(self, x):
        codes = self._codes(x)
        if codes is None:
            wq = self.quan_w(self.weight)
            mul, bias = self._scaled(wq)
            return F.linear(self._quant_input(x), wq if mul is None else wq * mul, bias)
        (ca, sa), (cw, sw) = codes
        mul, bias = self._scaled(cw * sw)
        scale = sa * sw.flatten()
        return self._rescale(F.linear(ca, cw), scale if mul is None else scale * mul, bias, -1)


QUANT_LAYERS = (QuantConv2d, QuantLinear)


def quant_modules(model: nn.Module):
    """Every quantized layer, fixed ones included (for optimizer groups and inspection)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QUANT_LAYERS)]
