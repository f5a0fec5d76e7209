"""Integer export of a finetuned model: `weights.npz` + `manifest.json` (format "mpq-export/3").

Layout of `weights.npz` (numpy archive, every array little-endian; keys use '/' as separator):

    {layer}/weight_int         int8,    the weight's shape   integer codes q of an 8-bit layer
    {layer}/weight_packed      uint8,   (ceil(n * b / 8),)   codes of a b < 8-bit layer, packed: the
                                                             bitstream of u = q - qmin (b bits each,
                                                             least significant bit first, row-major)
    {layer}/weight_scale       float32, () or (C_out,)       per-tensor or per-output-channel scale s
    {layer}/weight_zero_point  int8,    same shape as scale  zero point z (0 for LSQ; PTQ's own per channel)
    {layer}/weight             float32                       only for a layer kept in full precision
    {layer}/bias               float32, (C_out,)             when the layer has a bias
    float/{state_key}          float32                       every other float tensor of the model
                                                             (BN weight/bias/running_mean/running_var, ...)

Dequantized weight: w = s * (q - z), with s broadcast along axis 0 when per channel; this equals
the PyTorch model's fake-quantized weight exactly (float32).

Activation quantizers, recorded in the manifest only (scalars), on a layer's input (`act` of its
entry) or on a module's output (`outputs`: PTQ's BRECQ placement, after a block's add + ReLU):
x_q = s * (clamp(round_half_even(x / s) + z, qmin, qmax) - z), [qmin, qmax] = [0, 2^b - 1] when
unsigned and [-2^(b-1), 2^(b-1) - 1] when signed; z = 0 for LSQ. The image is not quantized.

`manifest.json` holds: format, scheme (lsq, or ptq with BN folded), arch, num_classes, image_size,
input layout, the policy (policy.yaml form), the sha256 of weights.npz, and per layer (module
order): name, role (stem / searchable / classifier), kind (conv / linear), geometry, weight {bits,
qmin, qmax, granularity, axis, keys} and act {bits, signed, qmin, qmax, scale, zero_point} (null
where not quantized); the module-output quantizers; and per BatchNorm module its eps (its tensors
are under float/). See docs/export.md.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from ..io import atomic_write_bytes, atomic_write_json
from ..quant.base import int_range
from .quantized import ActQuant, ExportError, LayerRecord, OutputAct, WeightQuant

# /2: codes of fewer than 8 bits packed (a W2 layer takes a quarter of a byte each);
# /3: PTQ models (`scheme`, module-output quantizers under `outputs`, activation zero points)
FORMAT = "mpq-export/3"
LSQ_SCHEME = {"name": "lsq", "batchnorm_folded": False}
NPZ_NAME, MANIFEST_NAME = "weights.npz", "manifest.json"
DEQUANT_RULE = "w = scale * (int - zero_point)"
ACT_RULE = "x_q = scale * (clamp(round_half_even(x / scale) + zero_point, qmin, qmax) - zero_point)"
PACK_RULE = "bitstream of u = int - qmin, bits bits per code, least significant bit first, row-major over shape"


def pack_codes(codes: np.ndarray, bits: int, qmin: int) -> np.ndarray:
    """Codes in [qmin, qmin + 2^bits - 1] as a uint8 bitstream of `bits` bits per code."""
    u = (codes.astype(np.int16).ravel() - qmin).astype(np.uint8)
    if u.size and int(u.max()) > int_range(bits, signed=False)[1]:
        raise ExportError(f"codes exceed {bits} bits above qmin {qmin}")
    planes = (u[:, None] >> np.arange(bits, dtype=np.uint8)) & 1
    return np.packbits(planes.ravel(), bitorder="little")


def unpack_codes(packed: np.ndarray, bits: int, qmin: int, shape) -> np.ndarray:
    """The int8 codes of `pack_codes`, in `shape`."""
    n = int(np.prod(shape, dtype=np.int64))
    planes = np.unpackbits(packed, bitorder="little")[: n * bits].reshape(n, bits)
    u = (planes.astype(np.int16) << np.arange(bits, dtype=np.int16)).sum(axis=1)
    return (u + qmin).astype(np.int8).reshape(tuple(shape))


def codes_of(weight: dict, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The int8 codes of a manifest weight entry, packed or not."""
    if "packed" in weight:
        return unpack_codes(arrays[weight["packed"]], weight["bits"], weight["qmin"], weight["shape"])
    return arrays[weight["int"]]


def _weight_entry(rec: LayerRecord) -> tuple[dict, dict[str, np.ndarray]]:
    p = f"{rec.name}/"
    if rec.weight is None:
        return {"bits": None, "float": p + "weight"}, {p + "weight": rec.float_weight}
    w = rec.weight
    entry = {"bits": w.bits, "signed": True, "qmin": w.qmin, "qmax": w.qmax,
             "granularity": "per_channel" if w.per_channel else "per_tensor", "axis": 0 if w.per_channel else None,
             "scale": p + "weight_scale", "zero_point": p + "weight_zero_point", "dequantize": DEQUANT_RULE}
    arrays = {p + "weight_scale": w.scale, p + "weight_zero_point": w.zero_point}
    if w.bits < 8:
        entry.update({"packed": p + "weight_packed", "shape": list(w.codes.shape), "packing": PACK_RULE})
        arrays[p + "weight_packed"] = pack_codes(w.codes, w.bits, w.qmin)
    else:
        entry["int"] = p + "weight_int"
        arrays[p + "weight_int"] = w.codes
    return entry, arrays


def _act_entry(act: ActQuant | None) -> dict | None:
    if act is None:
        return None
    return {"bits": act.bits, "signed": act.signed, "qmin": act.qmin, "qmax": act.qmax, "scale": act.scale,
            "zero_point": act.zero_point, "granularity": "per_tensor", "quantize": ACT_RULE}


def build_archive(records: list[LayerRecord], floats: dict[str, np.ndarray]) -> tuple[dict, list[dict]]:
    """(arrays for the npz, per-layer manifest entries)."""
    arrays, layers = {}, []
    for rec in records:
        weight, tensors = _weight_entry(rec)
        arrays.update(tensors)
        entry = {"name": rec.name, "role": rec.role, "kind": rec.kind, **rec.attrs,
                 "weight": weight, "act": _act_entry(rec.act), "bias": None}
        if rec.bias is not None:
            entry["bias"] = f"{rec.name}/bias"
            arrays[entry["bias"]] = rec.bias
        layers.append(entry)
    for key, value in floats.items():
        arrays[f"float/{key}"] = value
    return arrays, layers


def write_export(out_dir, records: list[LayerRecord], floats: dict[str, np.ndarray], *, arch: str,
                 num_classes: int, image_size: int, policy: dict | None = None,
                 batchnorm: dict | None = None, preprocessing: dict | None = None,
                 outputs: list[OutputAct] = (), scheme: dict | None = None) -> dict:
    """Write weights.npz then manifest.json into out_dir, each atomically; returns the manifest."""
    out_dir = Path(out_dir)
    arrays, layers = build_archive(records, floats)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    manifest = {
        "format": FORMAT,
        "scheme": scheme or LSQ_SCHEME,
        "arch": arch, "num_classes": int(num_classes), "image_size": int(image_size),
        "input": {"layout": "NCHW", "dtype": "float32", "shape": [None, 3, int(image_size), int(image_size)],
                  "quantized": False,
                  # null for checkpoints written before the stages recorded it
                  "normalize": None if preprocessing is None else {
                      k: preprocessing[k] for k in ("mean", "std", "rule")}},
        "classes": None if preprocessing is None else preprocessing.get("classes"),
        "tensors": {"file": NPZ_NAME, "sha256": hashlib.sha256(data).hexdigest(),
                    "float_prefix": "float/", "float_keys": sorted(floats)},
        "rules": {"weight": DEQUANT_RULE, "act": ACT_RULE},
        "layers": layers,
        "outputs": [{"module": o.module, "act": _act_entry(o.act)} for o in outputs],
        "batchnorm": batchnorm or {},
        "policy": policy,
    }
    atomic_write_bytes(out_dir / NPZ_NAME, data)
    atomic_write_json(out_dir / MANIFEST_NAME, manifest)
    return manifest


def read_export(out_dir) -> tuple[dict, dict[str, np.ndarray]]:
    """(manifest, arrays) of an export directory, checked against the manifest's checksum."""
    out_dir = Path(out_dir)
    mpath, npath = out_dir / MANIFEST_NAME, out_dir / NPZ_NAME
    for p in (mpath, npath):
        if not p.is_file():
            raise ExportError(f"{p}: not found; run `mpq export` first")
    manifest = json.loads(mpath.read_text())
    if manifest.get("format") != FORMAT:
        raise ExportError(f"{mpath}: not an mpq export (expected format {FORMAT!r})")
    data = npath.read_bytes()
    if hashlib.sha256(data).hexdigest() != manifest["tensors"]["sha256"]:
        raise ExportError(f"{npath}: checksum differs from {mpath}; the export is incomplete, export again")
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return manifest, arrays


def dequantized_weights(manifest: dict, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Float weights per layer name, rebuilt from the integer form (w = s * (q - z))."""
    out = {}
    for layer in manifest["layers"]:
        w = layer["weight"]
        if w["bits"] is None:
            out[layer["name"]] = arrays[w["float"]]
            continue
        out[layer["name"]] = WeightQuant(w["bits"], codes_of(w, arrays), arrays[w["scale"]],
                                         arrays[w["zero_point"]], w["qmin"], w["qmax"]).dequantize()
    return out
