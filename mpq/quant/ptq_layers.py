"""Conv2d / Linear for the PTQ path: per-channel affine weights with optional AdaRound, and where
activation quantisers sit (docs/methods/ptq.md).

Two placements of the activation quantisers:
- 'output' (BRECQ, the default): one quantiser after each block's add + ReLU, one after the stem's
  conv-BN-ReLU at the stem's fixed bits (8), and input quantisers only inside blocks (the inputs
  of a block's later main-path convs, i.e. after its internal ReLUs). A block's first conv, its
  downsample and the classifier read an already quantised block output and have none.
- 'input': every layer but the stem quantises its own input at its own policy bits (the image
  stays float), so mixed activation bits map onto the model exactly.
The logits are never quantised.

Checkpoints hold the integer weights (`w_int`, uint8 on [0, 2^b - 1]) with `w_delta` and `w_zero`
instead of float weights; loading turns them back into weights exactly on the grid.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..probe import probe_forward
from .adaround import initial_v, rounding_codes, soft_weight
from .affine import affine_codes, affine_quant
from .base import Quantizer, int_range, quantized_bits
from .blocks import find_blocks
from .convert import replace_module, split_layers
from .range_init import mse_range
from ..errors import InputError

ACT_PLACEMENTS = ("output", "input")
OUTPUT_QUANTIZER = "act_out"          # child name of a module whose output is quantised
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh)


def _grid_max(bits: int) -> int:
    return int_range(bits, signed=False)[1]


class AffineActQuantizer(Quantizer):
    """Per-tensor activation quantiser: learnable step, fixed zero-point, MSE-initialised on its
    first input. `enabled` is run-time state (off during weight reconstruction), not saved."""

    def __init__(self, bits: int | None):
        super().__init__()
        self.bits = quantized_bits(bits)
        self.delta = nn.Parameter(torch.ones(()))
        self.register_buffer("zero", torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.enabled = False

    @torch.no_grad()
    def init_range(self, x: torch.Tensor) -> None:
        delta, zero = mse_range(x, self.bits, per_channel=False)
        self.delta.copy_(delta)
        self.zero.copy_(zero)
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled or self.full_precision:
            return x
        if not self.initialized:
            self.init_range(x)
        return affine_quant(x, self.delta, self.zero, _grid_max(self.bits))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, enabled={self.enabled}"


class _PtqMixin:
    """Weight quantisation inside the PTQ layer, whose state holds the grid (w_delta, w_zero,
    w_int). The layer is not a Quantizer (it owns the conv and its float weight) but follows the
    same bit rules (mpq.quant.base); `w_bits` None is a float weight."""

    def _setup(self, out_channels: int, w_bits, a_bits, grid: str, init_ranges: bool, quant_input: bool):
        self.w_bits = quantized_bits(w_bits)
        shape = (out_channels, *([1] * (self.weight.dim() - 1)))
        self.register_buffer("w_delta", torch.ones(shape, device=self.weight.device))
        self.register_buffer("w_zero", torch.zeros(shape, device=self.weight.device))
        self.register_parameter("rounding", None)   # AdaRound's V while reconstructing
        self.quan_a = AffineActQuantizer(a_bits) if quant_input else None
        if self.w_bits is not None:
            if init_ranges:
                delta, zero = mse_range(self.weight, self.w_bits, per_channel=True, grid=grid)
                self.w_delta.copy_(delta.view(shape))
                self.w_zero.copy_(zero.view(shape))

    # --- weights ------------------------------------------------------------------------------
    def quantized_weight(self) -> torch.Tensor:
        if self.w_bits is None:
            return self.weight
        qmax = _grid_max(self.w_bits)
        if self.rounding is not None:
            return soft_weight(self.weight, self.rounding, self.w_delta, self.w_zero, qmax)
        return affine_quant(self.weight, self.w_delta, self.w_zero, qmax)

    @torch.no_grad()
    def weight_codes(self) -> torch.Tensor:
        """Integer codes of the weights (hard rounding while AdaRound is running), float32."""
        qmax = _grid_max(self.w_bits)
        if self.rounding is not None:
            return rounding_codes(self.weight, self.rounding, self.w_delta, self.w_zero, qmax, hard=True)
        return affine_codes(self.weight, self.w_delta, self.w_zero, qmax)

    @torch.no_grad()
    def integer_weight(self) -> torch.Tensor:
        return self.weight_codes().to(torch.uint8)

    def start_rounding(self) -> nn.Parameter:
        """Make the rounding learnable (soft weights start at the float weights)."""
        with torch.no_grad():
            self.rounding = nn.Parameter(initial_v(self.weight, self.w_delta))
        return self.rounding

    @torch.no_grad()
    def finish_rounding(self) -> None:
        """Commit the hard rounding into the weights; they then sit exactly on the grid."""
        hard = soft_weight(self.weight, self.rounding, self.w_delta, self.w_zero, _grid_max(self.w_bits),
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


def convert_to_ptq(model: nn.Module, policy, *, grid: str = "affine", init_ranges: bool = True,
                   act_placement: str = "output") -> nn.Module:
    """Swap every conv/linear for its PTQ layer at the policy's bits and add the activation
    quantisers of `act_placement`, in place. Call after BN folding (the placement probe needs
    the stem's activation to follow the stem conv directly)."""
    stem, _, classifier = split_layers(model)
    inputs, outputs = act_quantizer_bits(model, policy, act_placement)
    (stem_w, _), (cls_w, _) = policy.fixed_bits
    w_bits = {stem: stem_w, classifier: cls_w, **dict(zip(policy.names, policy.w_bits))}
    for name, w in w_bits.items():
        layer = model.get_submodule(name)
        cls = PtqConv2d if isinstance(layer, nn.Conv2d) else PtqLinear
        new = cls(layer, w, inputs.get(name), grid=grid, init_ranges=init_ranges, quant_input=name in inputs)
        replace_module(model, name, new)
    for name, bits in outputs.items():
        attach_output_quantizer(model.get_submodule(name), bits)
    return model


# --- placement ------------------------------------------------------------------------------
def act_quantizer_bits(model: nn.Module, policy, act_placement: str = "output") -> tuple[dict, dict]:
    """(bits of each layer's input quantiser, bits of each module's output quantiser).

    Policy a-bits are the bits of a layer's input. 'output' maps them as BRECQ places its
    quantisers: a block's output takes the a-bits of the next block's entry layers (first conv and
    downsample; the larger if they differ), the last block's output (the classifier's input) its
    own activation bits (those of its last main conv), the stem's output the stem's fixed a-bits.
    """
    if act_placement not in ACT_PLACEMENTS:
        raise InputError(f"ptq act_placement {act_placement!r} is unknown; use one of {', '.join(ACT_PLACEMENTS)}")
    stem, searchable, classifier = split_layers(model)
    policy.check_model(searchable)
    (_, stem_a), (_, cls_a) = policy.fixed_bits
    a_bits = {**dict(zip(policy.names, policy.a_bits)), classifier: cls_a}
    if act_placement == "input":
        return a_bits, {}
    blocks = find_blocks(model)
    stem_block = next((b for b in blocks if stem in b.layers), None)
    chain = [b for b in blocks if b is not stem_block]
    in_blocks = {n for b in blocks for n in b.layers}
    loose = [n for n in searchable if n not in in_blocks]
    if not chain or loose:
        raise InputError(f"ptq act_placement 'output' needs a chain stem -> blocks -> classifier; this model has "
                         f"{len(chain)} blocks and layers outside blocks {loose[:3]}: use act_placement: input")
    inputs = {n: a_bits[n] for b in blocks for n in b.main[1:]}
    stem_unit = stem_block.name if stem_block else stem_activation(model, stem, policy.image_size)
    outputs = {stem_unit: stem_a}
    for block, following in zip(chain, chain[1:]):
        outputs[block.name] = max(a_bits[n] for n in (following.main[0], *following.shortcut))
    outputs[chain[-1].name] = a_bits[chain[-1].main[-1]]
    return inputs, outputs


@torch.no_grad()
def stem_activation(model: nn.Module, stem: str, image_size: int) -> str:
    """The activation module that runs right after the stem conv (only folded-BN identities
    between them), found by a probe forward; it must run once per forward."""
    calls: list[str] = []
    names = {id(m): n for n, m in model.named_modules()}
    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_hook(lambda mod, i, o: calls.append(names[id(mod)])) for m in leaves]
    conv = model.get_submodule(stem)
    probe_forward(model, torch.zeros(1, conv.in_channels, image_size, image_size, device=conv.weight.device,
                                     dtype=conv.weight.dtype), hooks)
    after = calls[calls.index(stem) + 1:]
    for name in after:
        module = model.get_submodule(name)
        if isinstance(module, ACTIVATIONS) and calls.count(name) == 1:
            return name
        if not isinstance(module, nn.Identity):
            break
    raise InputError(f"no activation module runs once right after the stem {stem}; use act_placement: input")


def _quantize_output(module: nn.Module, inputs, output):
    return getattr(module, OUTPUT_QUANTIZER)(output)


def attach_output_quantizer(module: nn.Module, bits) -> None:
    """Quantise `module`'s output from now on (a child quantiser and a forward hook; the hook is a
    plain function of the module, so deep copies of the model keep working)."""
    module.add_module(OUTPUT_QUANTIZER, AffineActQuantizer(bits))
    module.register_forward_hook(_quantize_output)


def ptq_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in module.named_modules() if isinstance(m, PTQ_LAYERS)]


def act_quantizers(module: nn.Module) -> list[tuple[str, AffineActQuantizer]]:
    """Every activation quantiser inside `module` (layer inputs and module outputs)."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, AffineActQuantizer)]


def set_act_quant(module: nn.Module, enabled: bool) -> None:
    for _, quantizer in act_quantizers(module):
        quantizer.enabled = enabled
