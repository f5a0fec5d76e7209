"""Stage: read the learned LIMPQ steps from indicators.pt and write importance.pkl (+ .json sidecar)."""
from mpq import models
from mpq.build import fixed_bits_of
from mpq.checkpoint import load_checkpoint, load_state
from mpq.importance_file import write_importance
from mpq.io import atomic_write_json, sha256_file
from mpq.limpq.indicators import build_indicator_model, extract_indicators
from mpq.quant.convert import lsq_options
from mpq.runtime import begin_stage, run_stage, stage_parser


def main():
    ap = stage_parser(__doc__, "model", optional="quant, limpq")
    ap.add_argument("--indicators", required=True)
    ap.add_argument("--out", required=True, help="importance.pkl (LIMPQ format)")
    ap.add_argument("--meta-out", required=True, help="importance.json sidecar")
    args = ap.parse_args()
    spec = begin_stage(args)
    arch, num_classes = spec["model"]["arch"], spec["model"]["num_classes"]
    ckpt = load_checkpoint(args.indicators, kind="indicators", arch=arch, num_classes=num_classes)
    quant = ckpt["config"]["quant"]
    model = models.create(arch, num_classes=num_classes)
    build_indicator_model(model, image_size=ckpt["image_size"], candidates=quant["candidates"],
                          fixed_bits=fixed_bits_of(quant), **lsq_options(quant))
    load_state(model, ckpt["state_dict"], args.indicators)
    importance = extract_indicators(model)
    write_importance(args.out, importance)
    atomic_write_json(args.meta_out, {"method": "limpq", "arch": arch, "num_classes": num_classes,
                                      "candidates": importance.candidates, "layers": len(importance.names),
                                      "source": str(args.indicators), "source_sha256": sha256_file(args.indicators),
                                      "config": ckpt["config"]})


if __name__ == "__main__":
    run_stage(main)
