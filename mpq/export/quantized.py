"""Read the integer form out of a finetuned LSQ model: codes, scales, zero points, bits per layer.

Both exporters (npz + JSON, ONNX) start from these records, so they describe the same numbers.
LSQ layers have an exact uniform integer form; N2UQ models (learned thresholds) are refused with
the reason. PTQ models are read by mpq.export.ptq_records into the same records.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..quant.layers import QUANT_LAYERS
from ..quant.ptq_layers import OUTPUT_QUANTIZER
from ..quant.base import is_full_precision
from ..quant.lsq import LsqQuantizer
from ..errors import InputError


class ExportError(InputError):
    """A model that cannot be exported exactly (the message names the reason)."""


@dataclass
class WeightQuant:
    """w_fq = scale * (codes - zero_point); scale is a scalar or one value per output channel."""

    bits: int
    codes: np.ndarray          # int8, the weight's shape
    scale: np.ndarray          # float32, shape () or (C_out,)
    zero_point: np.ndarray     # int8, same shape as scale (0 for LSQ; PTQ's affine grid has its own)
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
    """x_q = scale * (clamp(round_half_even(x / scale) + zero_point, qmin, qmax) - zero_point), per tensor."""

    bits: int
    scale: float
    zero_point: int
    signed: bool
    qmin: int
    qmax: int


@dataclass
class OutputAct:
    """A quantizer on a module's output (PTQ's BRECQ placement: after a block's add + ReLU)."""

    module: str                    # the module whose forward output is quantized
    act: ActQuant

    @property
    def site(self) -> str:
        """Where the quantizer lives in the model (its state keys start with this)."""
        return f"{self.module}.{OUTPUT_QUANTIZER}"


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


def to_numpy(t: torch.Tensor, dtype) -> np.ndarray:
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
        return None, to_numpy(layer.weight, np.float32)
    if q.bits > 8:
        raise ExportError(f"layer {name}: {q.bits}-bit weights do not fit the int8 container")
    codes, step, qn, qp = q.integer_codes(layer.weight.detach())
    scale = step.reshape(-1) if q.per_channel else step.reshape(())
    scale_np = to_numpy(scale, np.float32)
    return WeightQuant(int(q.bits), to_numpy(codes, np.int8), scale_np, np.zeros(scale_np.shape, np.int8),
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


def layer_geometry(layer) -> dict:
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
            bias=None if module.bias is None else to_numpy(module.bias, np.float32), attrs=layer_geometry(module)))
    return records


def float_tensors(model: nn.Module, records: list[LayerRecord],
                  outputs: list[OutputAct] = ()) -> dict[str, np.ndarray]:
    """Every other floating-point parameter and buffer (BN affine and statistics, ...), by state key.

    Quantized layers' weights and biases and all quantizer state are left out: the records hold them.
    """
    skip_prefixes = [f"{r.name}." for r in records] + [f"{o.site}." for o in outputs]
    out = {}
    for key, tensor in model.state_dict().items():
        if any(key.startswith(p) for p in skip_prefixes) or not tensor.is_floating_point():
            continue
        out[key] = to_numpy(tensor, np.float32)
    return out


EXPORTED_KINDS = ("quantized", "ptq")


def refuse_checkpoint_kind(ckpt_kind: str, path) -> None:
    """Only models a finetune rule writes (QAT/subnet 'quantized', calibration-only 'ptq') export."""
    if ckpt_kind not in EXPORTED_KINDS:
        raise ExportError(f"{path}: holds a {ckpt_kind!r} checkpoint; export needs a finetuned "
                          f"'quantized' or 'ptq' checkpoint (the finetune or ptq stage's model.pt)")
