"""Stage: LIMPQ joint indicator training from the FP32 model. Writes indicators.pt."""
from mpq.build import fixed_bits_of
from mpq.checkpoint import save_checkpoint
from mpq.limpq.indicators import build_indicator_model, train_indicators
from mpq.quant.convert import lsq_options
from mpq.runtime import begin_stage, resolve_device, run_stage, stage_parser
from mpq.stage_common import fp32_model_of, load_data, loader_args
from mpq.train import resume


def main():
    ap = stage_parser(__doc__, "device, dataset, model, quant, limpq", optional="seed")
    ap.add_argument("--fp32", required=True, help="pretrained FP32 checkpoint")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    spec = begin_stage(args)
    resume.activate(args.out, spec)
    arch, num_classes = spec["model"]["arch"], spec["model"]["num_classes"]
    model = fp32_model_of(spec, args.fp32)
    data = load_data(spec)
    quant, cfg = spec["quant"], spec["limpq"]
    build_indicator_model(model, image_size=data.image_size, candidates=quant["candidates"],
                          fixed_bits=fixed_bits_of(quant), **lsq_options(quant),
                          fixed_layers_fp=cfg["fixed_layers_during_indicators"] == "fp")
    metrics = train_indicators(model, data, cfg, resolve_device(spec["device"]),
                               candidates=quant["candidates"], **loader_args(spec))
    save_checkpoint(args.out, state_dict=model.state_dict(), arch=arch, num_classes=num_classes,
                    kind="indicators", config=spec, metrics=metrics, image_size=data.image_size)
    resume.finish()


if __name__ == "__main__":
    run_stage(main)
