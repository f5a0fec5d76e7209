"""`mpq export MODEL.pt --out DIR [--onnx]`: integer weights (npz + JSON manifest) and ONNX (QDQ)."""
from __future__ import annotations

import logging

log = logging.getLogger("mpq")


def run(args) -> None:
    from ..export import export_checkpoint

    written = export_checkpoint(args.model, args.out, onnx=args.onnx, int4=not args.no_int4)
    for key in ("npz", "manifest", "onnx"):
        if key in written:
            print(f"{key}: {written[key]}")
    log.info("exported %d quantized layers from %s", written["layers"], args.model)


def register(sub) -> None:
    ap = sub.add_parser("export", help="export a finetuned model: integer npz + JSON, optionally ONNX",
                        description=__doc__.splitlines()[0])
    ap.add_argument("model", help="finetuned checkpoint (the finetune stage's model.pt)")
    ap.add_argument("--out", required=True, help="output directory (weights.npz, manifest.json, model.onnx)")
    ap.add_argument("--onnx", action="store_true", help="also write model.onnx with QuantizeLinear/DequantizeLinear")
    ap.add_argument("--no-int4", action="store_true",
                    help="store 4-bit tensors like other sub-8-bit ones (float weights, Clip + 8-bit QDQ) "
                         "for runtimes without INT4 support")
    ap.set_defaults(run=run)
