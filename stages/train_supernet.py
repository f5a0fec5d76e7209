"""Stage: RFQuant supernet training from the FP32 model. Writes supernet.pt (EMA weights, candidates)."""
import copy

from mpq.build import fixed_bits_of
from mpq.rfquant.supernet import build_supernet, save_supernet, subnet_accuracy
from mpq.rfquant.training import rfquant_config, supernet_training_split, train_supernet
from mpq.runtime import begin_stage, resolve_device, run_stage, stage_parser
from mpq.stage_common import fp32_model_of, load_data, loader_args


def main():
    ap = stage_parser(__doc__, "device, dataset, model, quant", optional="seed, rfquant")
    ap.add_argument("--fp32", required=True, help="pretrained FP32 checkpoint")
    ap.add_argument("--out", required=True, help="supernet.pt")
    args = ap.parse_args()
    spec = begin_stage(args)
    model, num_classes = fp32_model_of(spec, args.fp32), spec["model"]["num_classes"]
    data = load_data(spec)
    cfg, loading = rfquant_config(spec.get("rfquant")), loader_args(spec)
    state = build_supernet(model, image_size=data.image_size, candidates=spec["quant"]["candidates"],
                           fixed_bits=fixed_bits_of(spec["quant"]), switchable_bn=cfg["switchable_bn"],
                           grad_scale=cfg["grad_scale"], depthwise_min_bits=cfg["depthwise_min_bits"])
    holdout = {"fraction": float(cfg["holdout_fraction"]), "seed": loading["seed"]}
    train_set, held = supernet_training_split(data.train, cfg, batch_size=loading["batch_size"],
                                              seed=holdout["seed"])
    device = resolve_device(spec["device"])
    ema, metrics = train_supernet(model, state, train_set, cfg, device, **loading)
    if held is not None:   # information only: the EMA max subnet on the holdout, BN calibrated
        probe = subnet_accuracy(copy.deepcopy(ema), *state.max_subnet(), train_set, held, device,
                                images=int(cfg["bn_calibration_images"]), batch_size=loading["batch_size"],
                                seed=loading["seed"] + 1, workers=loading["workers"])
        metrics["max_subnet_holdout_top1"] = probe["top1"]
    save_supernet(args.out, ema, state, num_classes=num_classes, holdout=holdout, config=spec, metrics=metrics)


if __name__ == "__main__":
    run_stage(main)
