"""Export of finetuned quantized models: integer npz + JSON manifest, and ONNX with QDQ nodes.

`export_checkpoint` is the one entry point the CLI uses; the formats are documented in
mpq.export.npz, mpq.export.onnx_export and docs/export.md.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from .npz import LSQ_SCHEME, MANIFEST_NAME, NPZ_NAME, dequantized_weights, read_export, write_export
from .onnx_export import build_onnx, onnx_session, write_onnx
from .ptq_records import ptq_records
from .quantized import ExportError, LayerRecord, OutputAct, float_tensors, quant_records, refuse_checkpoint_kind

ONNX_NAME = "model.onnx"

__all__ = ["ExportError", "LayerRecord", "OutputAct", "export_checkpoint", "export_model", "quant_records",
           "ptq_records", "float_tensors",
           "write_export", "read_export", "dequantized_weights", "build_onnx", "write_onnx", "onnx_session",
           "NPZ_NAME", "MANIFEST_NAME", "ONNX_NAME"]


def export_model(model, policy, out_dir, *, onnx: bool = False, int4: bool = True,
                 preprocessing: dict | None = None, ptq: dict | None = None) -> dict:
    """Write weights.npz + manifest.json (and model.onnx) for a finetuned LSQ model, or for a PTQ
    model when `ptq` (the checkpoint's PTQ settings) is given; returns the paths.

    `preprocessing` (the checkpoint's: mean, std, image size, class names) goes into both files, so
    a deployment needs nothing from this library to feed the model and name its outputs.
    """
    model = model.cpu().eval()
    if ptq is None:
        records, outputs, scheme = quant_records(model), [], LSQ_SCHEME
    else:
        records, outputs = ptq_records(model)
        scheme = {"name": "ptq", "batchnorm_folded": True, "weight_grid": ptq.get("weight_grid", "affine"),
                  "act_placement": "output" if outputs else "input"}
    out_dir = Path(out_dir)
    written = {}
    if onnx:   # built first: a refusal leaves nothing half-written behind
        proto = build_onnx(model, records, policy.image_size, int4=int4, outputs=outputs, scheme=scheme["name"],
                           metadata={"arch": policy.arch, "num_classes": policy.num_classes,
                                     "image_size": policy.image_size, "policy": policy.to_dict(),
                                     "preprocessing": preprocessing})
    batchnorm = {name: {"eps": m.eps} for name, m in model.named_modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    write_export(out_dir, records, float_tensors(model, records, outputs), arch=policy.arch,
                 num_classes=policy.num_classes, image_size=policy.image_size, policy=policy.to_dict(),
                 batchnorm=batchnorm, preprocessing=preprocessing, outputs=outputs, scheme=scheme)
    written.update(npz=out_dir / NPZ_NAME, manifest=out_dir / MANIFEST_NAME)
    if onnx:
        write_onnx(out_dir / ONNX_NAME, proto)
        written["onnx"] = out_dir / ONNX_NAME
    return {"layers": len(records), **written}


def export_checkpoint(path, out_dir, *, onnx: bool = False, int4: bool = True) -> dict:
    """Export the checkpoint at `path`: kind 'quantized' (LSQ QAT, subnet) or 'ptq'; N2UQ is refused."""
    from ..build import finetuned_model
    from ..checkpoint import load_checkpoint

    refuse_checkpoint_kind(load_checkpoint(path)["kind"], path)
    model, policy, ckpt = finetuned_model(path)
    return export_model(model, policy, out_dir, onnx=onnx, int4=int4, preprocessing=ckpt.get("preprocessing"),
                        ptq=ckpt.get("ptq", {}) if ckpt["kind"] == "ptq" else None)
