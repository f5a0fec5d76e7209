"""Read the integer form out of a calibrated PTQ model into the exporters' records.

A PTQ model (mpq.quant.ptq_layers) differs from an LSQ one in three ways the records carry:
- BN is folded into the conv before it (weight and bias), so the BN modules are identities and
  the layers have a float bias;
- weights sit on a per-channel affine grid [0, 2^b - 1] with a zero point z per channel. The
  codes are shifted by 2^(b-1) onto the signed range [-2^(b-1), 2^(b-1) - 1] (z likewise), which
  changes no value (s * (q - z) is the same) and fits int8 / INT4 as LSQ's codes do;
- activation quantizers are affine (unsigned, own zero point) and sit on layer inputs or, in
  BRECQ's placement, on module outputs (after a block's add + ReLU): `OutputAct` records.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..quant.base import int_range
from ..quant.convert import split_layers
from ..quant.ptq_layers import OUTPUT_QUANTIZER, PTQ_LAYERS, AffineActQuantizer
from .quantized import ActQuant, ExportError, LayerRecord, OutputAct, WeightQuant, layer_geometry, to_numpy


@torch.no_grad()
def _weight(name: str, layer) -> tuple[WeightQuant | None, np.ndarray | None]:
    if layer.w_bits is None:
        return None, to_numpy(layer.weight, np.float32)
    if layer.rounding is not None:
        raise ExportError(f"layer {name}: AdaRound is still running (soft rounding); export a finished PTQ model")
    bits = layer.w_bits
    qmin, qmax = int_range(bits, signed=True)      # [0, 2^b - 1] shifted by qmin = -2^(b-1)
    codes = layer.weight_codes().to(torch.int16) + qmin
    zero = layer.w_zero.reshape(-1).to(torch.int16) + qmin
    if int(zero.min()) < qmin or int(zero.max()) > qmax:
        raise ExportError(f"layer {name}: a weight zero point lies outside its {bits}-bit grid")
    scale = to_numpy(layer.w_delta.reshape(-1), np.float32)
    return WeightQuant(bits, to_numpy(codes, np.int8), scale, to_numpy(zero, np.int8), qmin, qmax), None


@torch.no_grad()
def _act(site: str, q: AffineActQuantizer | None) -> ActQuant | None:
    if q is None or q.bits is None:
        return None
    if not q.enabled:
        raise ExportError(f"{site}: the activation quantizer is switched off; load the model with "
                          f"mpq.quant.ptq_model.load_ptq_model")
    if not bool(q.initialized):
        raise ExportError(f"{site}: activation range was never calibrated; export a PTQ model the ptq stage wrote")
    return ActQuant(int(q.bits), float(q.delta.detach().float()), int(q.zero), False, 0,
                    int_range(q.bits, signed=False)[1])


def ptq_records(model: nn.Module) -> tuple[list[LayerRecord], list[OutputAct]]:
    """(one record per PTQ conv/linear in module order, the module-output quantizers in module order)."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, PTQ_LAYERS)]
    if not layers:
        raise ExportError("model has no PTQ layers; export a 'ptq' checkpoint the ptq stage wrote")
    stem, _, classifier = split_layers(model)
    records = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and not isinstance(module, PTQ_LAYERS):
            raise ExportError(f"layer {name} is a float {type(module).__name__} inside a PTQ model; cannot export it")
        if not isinstance(module, PTQ_LAYERS):
            continue
        if getattr(module, "padding_mode", "zeros") != "zeros":
            raise ExportError(f"layer {name}: padding_mode {module.padding_mode!r} is not supported")
        weight, float_weight = _weight(name, module)
        role = "stem" if name == stem else "classifier" if name == classifier else "searchable"
        records.append(LayerRecord(
            name=name, role=role, kind="conv" if isinstance(module, nn.Conv2d) else "linear",
            weight=weight, float_weight=float_weight, act=_act(name, module.quan_a),
            bias=None if module.bias is None else to_numpy(module.bias, np.float32), attrs=layer_geometry(module)))
    outputs = []
    for name, module in model.named_modules():
        quantizer = getattr(module, OUTPUT_QUANTIZER, None)
        if isinstance(quantizer, AffineActQuantizer):
            act = _act(f"{name}.{OUTPUT_QUANTIZER}", quantizer)
            if act is not None:
                outputs.append(OutputAct(name, act))
    return records, outputs
