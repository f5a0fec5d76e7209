"""Read the integer form out of a finetuned LSQ model: codes, scales, zero points, bits per layer.

Both exporters (npz + JSON, ONNX) start from these records, so they describe the same numbers.
Only single-bit LSQ layers have an exact uniform integer form; N2UQ and PTQ models are refused
with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..quant.layers import QUANT_LAYERS
from ..quant.lsq import LsqQuantizer, is_full_precision


class ExportError(ValueError):
    """A model that cannot be exported exactly (the message names the reason)."""


@dataclass
class WeightQuant:
    """w_fq = scale * (codes - zero_point); scale is a scalar or one value per output channel."""

    bits: int
    codes: np.ndarray          # int8, the weight's shape
    scale: np.ndarray          # float32, shape () or (C_out,)
    zero_point: np.ndarray     # int8, same shape as scale (always 0: LSQ weights are symmetric)
    qmin: int
    qmax: int

    @property
    def per_channel(self) -> bool:
        return self.scale.ndim == 1

    def dequantize(self) -> np.ndarray:
        shape = (-1,) + (1,) * (self.codes.ndim - 1) if self.per_channel else ()
        zp = self.zero_point.astype(np.float32).reshape(shape)
        return ((self.codes.astype(np.float32) - zp) * self.scale.reshape(shape)).astype(np.float32)


@dataclass
class ActQuant:
    """x_q = scale * (round_half_even(clamp(x / scale, qmin, qmax)) - zero_point), per tensor."""

    bits: int
    scale: float
    zero_point: int
    signed: bool
    qmin: int
    qmax: int


@dataclass
class LayerRecord:
    name: str
    role: str                      # 'stem' | 'searchable' | 'classifier'
    kind: str                      # 'conv' | 'linear'
    weight: WeightQuant | None     # None: weight kept in float
    float_weight: np.ndarray | None
    act: ActQuant | None           # None: input not quantized (the stem's image, or full precision)
    bias: np.ndarray | None
    attrs: dict                    # conv geometry (stride, padding, dilation, groups) or linear sizes


def _np(t: torch.Tensor, dtype) -> np.ndarray:
    return t.detach().cpu().numpy().astype(dtype)


def _check_quantizer(name: str, q, what: str) -> None:
    if q is None or isinstance(q, LsqQuantizer):
        return
    family = type(q).__name__
    if "Ltq" in family or "L1Weight" in family:
        raise ExportError(f"layer {name} uses N2UQ quantizers ({family}): their learned thresholds are "
                          f"not a uniform integer grid, so only LSQ models can be exported")
    raise ExportError(f"layer {name} has a {what} quantizer of type {family}; only LSQ models can be exported")


@torch.no_grad()
def _weight(name: str, layer) -> tuple[WeightQuant | None, np.ndarray | None]:
    q = layer.quan_w
    if is_full_precision(q.bits):
        return None, _np(layer.weight, np.float32)
    if q.bits > 8:
        raise ExportError(f"layer {name}: {q.bits}-bit weights do not fit the int8 container")
    codes, step, qn, qp = q.integer_codes(layer.weight.detach())
    scale = step.reshape(-1) if q.per_channel else step.reshape(())
    scale_np = _np(scale, np.float32)
    return WeightQuant(int(q.bits), _np(codes, np.int8), scale_np, np.zeros(scale_np.shape, np.int8),
                       int(qn), int(qp)), None


@torch.no_grad()
def _act(name: str, q: LsqQuantizer | None) -> ActQuant | None:
    if q is None or is_full_precision(q.bits):
        return None
    if q.bits > 8:
        raise ExportError(f"layer {name}: {q.bits}-bit activations do not fit an 8-bit container")
    if not int(q.init_state[q.index_of(q.bits)]):
        raise ExportError(f"layer {name}: activation step was never initialised; export a finetuned "
                          f"model (run the finetune stage first)")
    qn, qp = q.qrange()
    scale = float(q.step_for(q.bits).detach().float().reshape(()))
    return ActQuant(int(q.bits), scale, 0, bool(q.signed), int(qn), int(qp))


def _attrs(layer) -> dict:
    if isinstance(layer, nn.Conv2d):
        return {"in_channels": layer.in_channels, "out_channels": layer.out_channels,
                "kernel_size": list(layer.kernel_size), "stride": list(layer.stride),
                "padding": list(layer.padding), "dilation": list(layer.dilation), "groups": layer.groups}
    return {"in_features": layer.in_features, "out_features": layer.out_features}


def quant_records(model: nn.Module) -> list[LayerRecord]:
    """One record per quantized Conv2d/Linear, in module order; refuses what it cannot express."""
    if getattr(model, "mpq_searchable", None) is None:
        raise ExportError("model is not quantized (no LSQ layers); export a finetuned 'quantized' checkpoint")
    stem, classifier = model.mpq_fixed
    searchable = set(model.mpq_searchable)
    records = []
    for name, module in model.named_modules():
        if not isinstance(module, QUANT_LAYERS):
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                raise ExportError(f"layer {name} is a float {type(module).__name__} inside a quantized model; "
                                  f"cannot export it")
            continue
        _check_quantizer(name, module.quan_w, "weight")
        _check_quantizer(name, module.quan_a, "activation")
        if getattr(module, "padding_mode", "zeros") != "zeros":
            raise ExportError(f"layer {name}: padding_mode {module.padding_mode!r} is not supported")
        role = "stem" if name == stem else "classifier" if name == classifier else "searchable"
        if role == "searchable" and name not in searchable:
            raise ExportError(f"layer {name} is quantized but neither fixed nor searchable")
        weight, float_weight = _weight(name, module)
        records.append(LayerRecord(
            name=name, role=role, kind="conv" if isinstance(module, nn.Conv2d) else "linear",
            weight=weight, float_weight=float_weight, act=_act(name, module.quan_a),
            bias=None if module.bias is None else _np(module.bias, np.float32), attrs=_attrs(module)))
    return records


def float_tensors(model: nn.Module) -> dict[str, np.ndarray]:
    """Every other floating-point parameter and buffer (BN affine and statistics, ...), by state key.

    Quantized layers' weights and biases and all quantizer state are left out: the records hold them.
    """
    skip_prefixes = []
    for name, module in model.named_modules():
        if isinstance(module, QUANT_LAYERS):
            skip_prefixes.append(f"{name}.")
    out = {}
    for key, tensor in model.state_dict().items():
        if any(key.startswith(p) for p in skip_prefixes) or not tensor.is_floating_point():
            continue
        out[key] = _np(tensor, np.float32)
    return out


def refuse_checkpoint_kind(ckpt_kind: str, path) -> None:
    """PTQ checkpoints hold folded BN and affine grids with their own layers: not exported (yet)."""
    if ckpt_kind == "ptq":
        raise ExportError(f"{path}: holds a PTQ model (kind 'ptq'): its folded-BN affine layers are not "
                          f"supported by the exporter; export a QAT (LSQ) 'quantized' checkpoint")
    if ckpt_kind != "quantized":
        raise ExportError(f"{path}: holds a {ckpt_kind!r} checkpoint; export needs a finetuned "
                          f"'quantized' checkpoint (the finetune stage's model.pt)")
