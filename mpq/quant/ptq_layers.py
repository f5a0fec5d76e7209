"""Conv2d / Linear for the PTQ path: per-channel affine weights with optional AdaRound, and an
affine quantiser on the input (specs/ptq.md sections 2-5).

Inputs are quantised on the consuming layer, so every quantised layer's input is quantised exactly
once at that layer's own bits; a block's output is quantised by the next block's first conv and
shortcut. The stem's input (the image) stays float; the logits are never quantised.

Checkpoints hold the integer weights (`w_int`, uint8 on [0, 2^b - 1]) with `w_delta` and `w_zero`
instead of float weights; loading turns them back into weights exactly on the grid.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .adaround import initial_v, soft_weight
from .affine import AffineActQuantizer, affine_quant, grid_max, mse_range
from .convert import _swap, split_layers


class _PtqMixin:
    def _setup(self, out_channels: int, w_bits, a_bits, grid: str, init_ranges: bool, quant_input: bool):
        self.w_bits = None if w_bits is None or w_bits >= 32 else int(w_bits)
        shape = (out_channels, *([1] * (self.weight.dim() - 1)))
        self.register_buffer("w_delta", torch.ones(shape, device=self.weight.device))
        self.register_buffer("w_zero", torch.zeros(shape, device=self.weight.device))
        self.register_parameter("rounding", None)   # AdaRound's V while reconstructing
        self.quan_a = AffineActQuantizer(a_bits) if quant_input else None
        if self.w_bits is not None:
            grid_max(self.w_bits)
            if init_ranges:
                delta, zero = mse_range(self.weight, self.w_bits, per_channel=True, grid=grid)
                self.w_delta.copy_(delta.view(shape))
                self.w_zero.copy_(zero.view(shape))

    # --- weights ------------------------------------------------------------------------------
    def quantized_weight(self) -> torch.Tensor:
        if self.w_bits is None:
            return self.weight
        qmax = grid_max(self.w_bits)
        if self.rounding is not None:
            return soft_weight(self.weight, self.rounding, self.w_delta, self.w_zero, qmax)
        return affine_quant(self.weight, self.w_delta, self.w_zero, qmax)

    @torch.no_grad()
    def integer_weight(self) -> torch.Tensor:
        q = torch.round(self.quantized_weight() / self.w_delta) + self.w_zero
        return q.clamp(0, grid_max(self.w_bits)).to(torch.uint8)

    def start_rounding(self) -> nn.Parameter:
        """Make the rounding learnable (soft weights start at the float weights)."""
        with torch.no_grad():
            self.rounding = nn.Parameter(initial_v(self.weight, self.w_delta))
        return self.rounding

    @torch.no_grad()
    def finish_rounding(self) -> None:
        """Commit the hard rounding into the weights; they then sit exactly on the grid."""
        hard = soft_weight(self.weight, self.rounding, self.w_delta, self.w_zero, grid_max(self.w_bits),
                           hard=True)
        self.rounding = None
        self.weight.copy_(hard)

    def _quant_input(self, x):
        return x if self.quan_a is None else self.quan_a(x)

    # --- integer checkpoints -------------------------------------------------------------------
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.w_bits is not None:
            del destination[prefix + "weight"]
            destination[prefix + "w_int"] = self.integer_weight()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "w_int"
        if self.w_bits is not None and key in state_dict:
            w_int = state_dict.pop(key).float()
            delta, zero = state_dict.get(prefix + "w_delta"), state_dict.get(prefix + "w_zero")
            if delta is not None and zero is not None and delta.shape == self.w_delta.shape:
                state_dict[prefix + "weight"] = delta * (w_int - zero)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class PtqConv2d(_PtqMixin, nn.Conv2d):
    def __init__(self, conv: nn.Conv2d, w_bits, a_bits, *, grid: str = "affine", init_ranges: bool = True,
                 quant_input: bool = True):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
                         device=conv.weight.device, dtype=conv.weight.dtype)
        self.weight, self.bias = conv.weight, conv.bias
        self._setup(conv.out_channels, w_bits, a_bits, grid, init_ranges, quant_input)

    def forward(self, x):
        return self._conv_forward(self._quant_input(x), self.quantized_weight(), self.bias)


class PtqLinear(_PtqMixin, nn.Linear):
    def __init__(self, linear: nn.Linear, w_bits, a_bits, *, grid: str = "affine", init_ranges: bool = True,
                 quant_input: bool = True):
        super().__init__(linear.in_features, linear.out_features, linear.bias is not None,
                         device=linear.weight.device, dtype=linear.weight.dtype)
        self.weight, self.bias = linear.weight, linear.bias
        self._setup(linear.out_features, w_bits, a_bits, grid, init_ranges, quant_input)

    def forward(self, x):
        return F.linear(self._quant_input(x), self.quantized_weight(), self.bias)


PTQ_LAYERS = (PtqConv2d, PtqLinear)


def convert_to_ptq(model: nn.Module, policy, *, grid: str = "affine", init_ranges: bool = True) -> nn.Module:
    """Swap every conv/linear for its PTQ layer at the policy's bits, in place.

    Fixed layers take policy.fixed_bits: the stem's weights (its input stays float) and the
    classifier's weights and input.
    """
    stem, searchable, classifier = split_layers(model)
    policy.check_model(searchable)
    (stem_w, _), (cls_w, cls_a) = policy.fixed_bits
    bits = {stem: (stem_w, None), classifier: (cls_w, cls_a),
            **{n: (w, a) for n, w, a in zip(policy.names, policy.w_bits, policy.a_bits)}}
    for name, (w, a) in bits.items():
        layer = model.get_submodule(name)
        cls = PtqConv2d if isinstance(layer, nn.Conv2d) else PtqLinear
        new = cls(layer, w, a, grid=grid, init_ranges=init_ranges, quant_input=name != stem)
        _swap(model, name, new)
    return model


def ptq_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in module.named_modules() if isinstance(m, PTQ_LAYERS)]


def set_act_quant(module: nn.Module, enabled: bool) -> None:
    for _, layer in ptq_layers(module):
        if layer.quan_a is not None:
            layer.quan_a.enabled = enabled
