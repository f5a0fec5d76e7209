"""Cost accounting (docs/methods/accounting.md): per-layer MACs by tracing, BitOps, size, budgets.

Every count is an exact Python int; floats appear only in the final division into G or MiB, so
budgets and reports agree to the last operation.
"""
from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Sequence

import torch
from torch import nn
from .errors import InputError
from .registry import ACCURACY_BUDGETS, BITOPS_BUDGETS, SIZE_BUDGETS

MIB_BITS = 8 * 2**20
GIGA = 10**9
FP32_BITS = 32


@dataclass(frozen=True)
class LayerCost:
    """Shape-derived cost of one Conv2d/Linear; bias excluded."""

    name: str
    kind: str  # 'conv' | 'linear'
    macs: int
    params: int
    out_hw: tuple[int, int] | None  # conv output size; None for linear

    def to_dict(self) -> dict:
        out_hw = None if self.out_hw is None else list(self.out_hw)
        return {"name": self.name, "kind": self.kind, "macs": self.macs, "params": self.params,
                "out_hw": out_hw}

    @classmethod
    def from_dict(cls, data: dict) -> "LayerCost":
        out_hw = data.get("out_hw")
        return cls(str(data["name"]), str(data["kind"]), int(data["macs"]), int(data["params"]),
                   None if out_hw is None else (int(out_hw[0]), int(out_hw[1])))


# ---------------------------------------------------------------------------------------- tracing

def _limpq_float_area(conv: nn.Conv2d, in_hw: tuple[int, int]) -> int:
    """LIMPQ's output area: true division per side, product, then truncation (accounting.md 7)."""
    if isinstance(conv.padding, str):
        raise InputError(f"float_hw_quirk needs numeric padding, {conv} has {conv.padding!r}")
    sides = [
        (in_hw[i] + 2 * conv.padding[i] - conv.dilation[i] * (conv.kernel_size[i] - 1) - 1)
        / conv.stride[i] + 1
        for i in (0, 1)
    ]
    return int(sides[0] * sides[1])


def _layer_cost(
    name: str, module: nn.Module, in_shape, out_shape, float_hw_quirk: bool
) -> LayerCost:
    params = module.weight.numel()
    if isinstance(module, nn.Linear):
        return LayerCost(name, "linear", module.in_features * module.out_features, params, None)
    out_hw = (int(out_shape[-2]), int(out_shape[-1]))
    area = out_hw[0] * out_hw[1]
    if float_hw_quirk:
        area = _limpq_float_area(module, (int(in_shape[-2]), int(in_shape[-1])))
    # params == C_out * C_in/g * k_h * k_w, so MAC = params * output positions.
    return LayerCost(name, "conv", params * area, params, out_hw)


def trace_layers(
    model: nn.Module,
    image_size: int | tuple[int, int],
    in_chans: int = 3,
    float_hw_quirk: bool = False,
) -> list[LayerCost]:
    """Cost of every Conv2d and Linear, in `named_modules` order, from one traced forward pass.

    Real output shapes make H_out/W_out exact by construction. `float_hw_quirk` reproduces LIMPQ's
    inflated counts for golden tests only; never use it for reported numbers.
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    layers = [
        (name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    shapes: dict[str, tuple] = {}

    def recorder(name: str):
        def hook(module, inputs, output):
            if name in shapes:
                raise RuntimeError(f"layer {name} ran twice in one forward; its cost is ambiguous")
            shapes[name] = (tuple(inputs[0].shape), tuple(output.shape))
        return hook

    training_flags = {module: module.training for module in model.modules()}
    handles = [module.register_forward_hook(recorder(name)) for name, module in layers]
    try:
        reference = next(model.parameters(), None)
        dummy = torch.zeros(1, in_chans, height, width,
                            device=None if reference is None else reference.device,
                            dtype=None if reference is None else reference.dtype)
        model.eval()
        with torch.no_grad():
            model(dummy)
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in training_flags.items():
            module.training = flag

    missing = [name for name, _ in layers if name not in shapes]
    if missing:
        raise RuntimeError(f"layers never ran in the forward pass, cannot cost them: {missing}")
    return [_layer_cost(name, m, *shapes[name], float_hw_quirk) for name, m in layers]


# ----------------------------------------------------------------------------------------- budget

@dataclass(frozen=True)
class SearchBudget:
    """Constraints on the searchable part only; the totals are kept for reports."""

    bitops: int | None  # G_S
    size_bits: int | None  # S_S
    total_bitops: int | None
    total_size_bits: int | None


def _budget_text(budget: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in budget.items())


def parse_wxay(text: str) -> tuple[int, int]:
    """'w3a4' -> (3, 4)."""
    match = re.fullmatch(r"\s*[wW](\d+)[aA](\d+)\s*", text) if isinstance(text, str) else None
    if match is None or int(match[1]) < 1 or int(match[2]) < 1:
        raise InputError(
            f"malformed bit spec {text!r}; write it as 'wXaY' with X, Y >= 1, e.g. 'w3a4'")
    return int(match[1]), int(match[2])


def _positive_fraction(key: str, value) -> Fraction:
    """Exact value of a positive config number; via its decimal text, so 0.1 means 1/10."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise InputError(f"budget {key}={value!r} must be a positive number")
    try:
        exact = Fraction(Decimal(str(value)))
    except (InvalidOperation, ValueError, OverflowError):
        raise InputError(f"budget {key}={value!r} must be a positive finite number") from None
    if exact <= 0:
        raise InputError(f"budget {key}={value!r} must be positive")
    return exact


def _check_budget_keys(budget: dict) -> None:
    if not isinstance(budget, dict) or not budget:
        raise InputError(
            "budget is empty; give one of bitops ('wXaY'), bitops_g, size_mb, compression_ratio, avg_weight_bits")
    if set(budget) & set(ACCURACY_BUDGETS):
        raise InputError(f"budget {_budget_text(budget)} is an accuracy target, not a cost: the greedy search "
                         "meets it on the supernet (mpq.rfquant.accuracy_target)")
    unknown = sorted(set(budget) - set(BITOPS_BUDGETS) - set(SIZE_BUDGETS))
    if unknown:
        raise InputError(f"unknown budget key(s) {unknown}; use bitops ('wXaY') or bitops_g, "
                         "and/or size_mb, compression_ratio or avg_weight_bits")
    for group in (BITOPS_BUDGETS, SIZE_BUDGETS):
        given = [key for key in group if key in budget]
        if len(given) > 1:
            raise InputError(f"budget gives both {given[0]} and {given[1]}; keep only one of them")


# ------------------------------------------------------------------------------------ cost model

def _bits(value) -> int:
    """A policy bit-width; None means unquantised, counted as FP32."""
    if value is None:
        return FP32_BITS
    try:
        bits = operator.index(value)
    except TypeError:
        bits = 0
    if isinstance(value, bool) or bits < 1:
        raise InputError(f"bit-width must be a positive int or None, got {value!r}")
    return bits


@dataclass(frozen=True)
class CostModel:
    """Layer shapes split into stem, searchable layers and classifier, plus the fixed bits."""

    stem: LayerCost
    searchable: tuple[LayerCost, ...]
    classifier: LayerCost
    # (w, a) of the stem, then of the classifier; the stem's a counts the image as 8-bit.
    fixed_bits: tuple[tuple[int, int], tuple[int, int]] = ((8, 8), (8, 8))

    def __post_init__(self):
        # Normalise lists (from YAML/JSON) so equality and hashing behave.
        object.__setattr__(self, "searchable", tuple(self.searchable))
        (stem_w, stem_a), (cls_w, cls_a) = self.fixed_bits
        fixed = ((int(stem_w), int(stem_a)), (int(cls_w), int(cls_a)))
        object.__setattr__(self, "fixed_bits", fixed)

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        image_size: int | tuple[int, int],
        fixed_bits=((8, 8), (8, 8)),
        float_hw_quirk: bool = False,
    ) -> "CostModel":
        """Stem = first Conv2d, classifier = last Linear, searchable = all others in order."""
        layers = trace_layers(model, image_size, float_hw_quirk=float_hw_quirk)
        convs = [i for i, layer in enumerate(layers) if layer.kind == "conv"]
        linears = [i for i, layer in enumerate(layers) if layer.kind == "linear"]
        if not convs or not linears:
            raise InputError(
                "a cost model needs at least one Conv2d (stem) and one Linear (classifier)")
        stem_index, classifier_index = convs[0], linears[-1]
        searchable = tuple(
            layer for i, layer in enumerate(layers) if i not in (stem_index, classifier_index))
        return cls(layers[stem_index], searchable, layers[classifier_index], fixed_bits)

    # ------------------------------------------------------------------ searchable-layer views
    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.searchable]

    @property
    def macs(self) -> list[int]:
        return [layer.macs for layer in self.searchable]

    @property
    def params(self) -> list[int]:
        return [layer.params for layer in self.searchable]

    @property
    def all_layers(self) -> tuple[LayerCost, ...]:
        return (self.stem, *self.searchable, self.classifier)

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self.all_layers)

    @property
    def total_params(self) -> int:
        return sum(layer.params for layer in self.all_layers)

    # ------------------------------------------------------------------------- fixed layers
    @property
    def fixed_bitops(self) -> int:
        (stem_w, stem_a), (cls_w, cls_a) = self.fixed_bits
        return self.stem.macs * stem_w * stem_a + self.classifier.macs * cls_w * cls_a

    @property
    def fixed_size_bits(self) -> int:
        (stem_w, _), (cls_w, _) = self.fixed_bits
        return self.stem.params * stem_w + self.classifier.params * cls_w

    # ------------------------------------------------------------------------------ policies
    def _check_length(self, bits: Sequence, what: str) -> list[int]:
        if len(bits) != len(self.searchable):
            raise InputError(f"{what} has {len(bits)} entries, the model has "
                             f"{len(self.searchable)} searchable layers")
        return [_bits(b) for b in bits]

    def bitops(self, w_bits: Sequence[int], a_bits: Sequence[int]) -> int:
        """Total BitOps including the fixed layers."""
        w_bits, a_bits = self._check_length(w_bits, "w_bits"), self._check_length(a_bits, "a_bits")
        return sum(m * w * a for m, w, a in zip(self.macs, w_bits, a_bits)) + self.fixed_bitops

    def size_bits(self, w_bits: Sequence[int]) -> int:
        """Total weight bits including the fixed layers."""
        w_bits = self._check_length(w_bits, "w_bits")
        return sum(p * w for p, w in zip(self.params, w_bits)) + self.fixed_size_bits

    def size_mib(self, w_bits: Sequence[int]) -> float:
        return self.size_bits(w_bits) / MIB_BITS

    def compression_ratio(self, w_bits: Sequence[int]) -> float:
        """FP32 weight bits over quantised weight bits (LIMPQ's definition)."""
        return FP32_BITS * self.total_params / self.size_bits(w_bits)

    def uniform_bitops(self, w: int, a: int) -> int:
        """Total BitOps of 'wXaY': searchable layers at (w, a), fixed layers at their bits."""
        return _bits(w) * _bits(a) * sum(self.macs) + self.fixed_bitops

    @property
    def fp32_bitops(self) -> int:
        return FP32_BITS * FP32_BITS * self.total_macs

    @property
    def fp32_size_bits(self) -> int:
        return FP32_BITS * self.total_params

    @property
    def fp32_size_mib(self) -> float:
        return self.fp32_size_bits / MIB_BITS

    def averages(self, w_bits: Sequence[int], a_bits: Sequence[int]) -> dict:
        """Plain and cost-weighted mean bits over the searchable layers (accounting.md 6)."""
        w_bits, a_bits = self._check_length(w_bits, "w_bits"), self._check_length(a_bits, "a_bits")
        count = len(w_bits)
        return {
            "avg_w_bits": sum(w_bits) / count,
            "avg_a_bits": sum(a_bits) / count,
            "avg_w_bits_param_weighted":
                sum(p * w for p, w in zip(self.params, w_bits)) / sum(self.params),
            "avg_a_bits_mac_weighted":
                sum(m * a for m, a in zip(self.macs, a_bits)) / sum(self.macs),
        }

    def layer_table(self, w_bits: Sequence[int], a_bits: Sequence[int]) -> list[dict]:
        """Per-layer report rows, stem and classifier included, in model order."""
        w_bits, a_bits = self._check_length(w_bits, "w_bits"), self._check_length(a_bits, "a_bits")
        (stem_w, stem_a), (cls_w, cls_a) = self.fixed_bits
        bits = [(stem_w, stem_a), *zip(w_bits, a_bits), (cls_w, cls_a)]
        return [
            {"name": layer.name, "macs": layer.macs, "params": layer.params,
             "w_bits": w, "a_bits": a, "bitops": layer.macs * w * a}
            for layer, (w, a) in zip(self.all_layers, bits)
        ]

    # -------------------------------------------------------------------------------- budget
    def searchable_budget(self, budget: dict) -> SearchBudget:
        """Turn a config budget into limits on the searchable part (accounting.md 3-5).

        Non-integer targets are floored: a policy within the integer limit never exceeds the
        real-valued target.
        """
        _check_budget_keys(budget)
        bitops = total_bitops = size = total_size = None
        if "bitops" in budget:
            bitops = self._uniform_share(budget["bitops"])
        if "bitops_g" in budget:
            target = math.floor(_positive_fraction("bitops_g", budget["bitops_g"]) * GIGA)
            bitops = target - self.fixed_bitops
            if bitops <= 0:
                raise InputError(
                    f"budget bitops_g={budget['bitops_g']} is below the fixed layers' own cost "
                    f"{self.fixed_bitops / GIGA:.4f} G ({self._fixed_label()}); raise it")
        if bitops is not None:
            total_bitops = bitops + self.fixed_bitops
        if "size_mb" in budget:
            target = math.floor(_positive_fraction("size_mb", budget["size_mb"]) * MIB_BITS)
            size = self._searchable_size("size_mb", budget["size_mb"], target)
        if "compression_ratio" in budget:
            ratio = _positive_fraction("compression_ratio", budget["compression_ratio"])
            target = math.floor(FP32_BITS * self.total_params / ratio)
            size = self._searchable_size("compression_ratio", budget["compression_ratio"], target)
        if "avg_weight_bits" in budget:   # NVIDIA ModelOpt's effective bits: weight bits / weights
            bits = _positive_fraction("avg_weight_bits", budget["avg_weight_bits"])
            target = math.floor(bits * self.total_params)
            size = self._searchable_size("avg_weight_bits", budget["avg_weight_bits"], target)
        if size is not None:
            total_size = size + self.fixed_size_bits
        if total_bitops is not None and total_bitops > self.fp32_bitops:
            raise InputError(f"budget {_budget_text(budget)} asks for {total_bitops / GIGA:.4f} G BitOps, above the "
                             f"FP32 model's {self.fp32_bitops / GIGA:.4f} G; lower it")
        if total_size is not None and total_size > self.fp32_size_bits:
            raise InputError(f"budget {_budget_text(budget)} asks for {total_size / MIB_BITS:.4f} MiB, above the "
                             f"FP32 model's {self.fp32_size_mib:.4f} MiB; lower it")
        return SearchBudget(bitops, size, total_bitops, total_size)

    def _uniform_share(self, value) -> int:
        """Searchable BitOps of a `bitops` budget: uniform 'wXaY', or a sweep's point `{between:
        [wXaY, wXaY], at: t}`, t of the way from the first to the second (floored)."""
        if isinstance(value, dict) and set(value) == {"between", "at"} and 0 <= value["at"] <= 1:
            (x0, y0), (x1, y1) = (parse_wxay(v) for v in value["between"])
            return math.floor(((1 - value["at"]) * x0 * y0 + value["at"] * x1 * y1) * sum(self.macs))
        if not isinstance(value, str):
            raise InputError(f"budget bitops={value!r} must be a 'wXaY' string or a sweep's point "
                             "{between: [wXaY, wXaY], at: 0..1}; for an absolute target in G use bitops_g")
        x, y = parse_wxay(value)
        return x * y * sum(self.macs)

    def _searchable_size(self, key: str, value, target_bits: int) -> int:
        size = target_bits - self.fixed_size_bits
        if size <= 0:
            fixed_mib = self.fixed_size_bits / MIB_BITS
            raise InputError(
                f"budget {key}={value} leaves no room: the fixed layers alone take "
                f"{fixed_mib:.4f} MiB ({self._fixed_label()}); "
                + ("lower it" if key == "compression_ratio" else "raise it"))
        return size

    def _fixed_label(self) -> str:
        (stem_w, stem_a), (cls_w, cls_a) = self.fixed_bits
        return f"stem W{stem_w}A{stem_a} + classifier W{cls_w}A{cls_a}"

    # ----------------------------------------------------------------------------- plain form
    def to_dict(self) -> dict:
        return {
            "stem": self.stem.to_dict(),
            "searchable": [layer.to_dict() for layer in self.searchable],
            "classifier": self.classifier.to_dict(),
            "fixed_bits": [list(pair) for pair in self.fixed_bits],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "CostModel":
        return cls(
            LayerCost.from_dict(data["stem"]),
            tuple(LayerCost.from_dict(layer) for layer in data["searchable"]),
            LayerCost.from_dict(data["classifier"]),
            tuple(tuple(pair) for pair in data.get("fixed_bits", ((8, 8), (8, 8)))),
        )
