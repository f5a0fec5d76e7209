"""Stage: OMPQ orthogonality of the FP32 model's units. Writes ompq/importance.pkl."""
import logging

from mpq.data.calibration import calibration_images
from mpq.ompq.orthogonality import compute_ompq_importance, write_ompq_importance
from mpq.runtime import begin_stage, resolve_device, run_stage, stage_parser
from mpq.stage_common import fp32_model_of, load_data

log = logging.getLogger("mpq")


def main():
    ap = stage_parser(__doc__, "device, dataset, model", optional="seed, ompq (samples, augment, bn_mode)")
    ap.add_argument("--fp32", required=True, help="pretrained FP32 checkpoint")
    ap.add_argument("--out", required=True, help="importance.pkl (OMPQ format)")
    args = ap.parse_args()
    spec = begin_stage(args)
    model = fp32_model_of(spec, args.fp32)
    cfg = spec["ompq"]
    data = load_data(spec)
    images = calibration_images(data.train, int(cfg["samples"]), int(spec["seed"]),
                                augment=bool(cfg["augment"]))
    device = resolve_device(spec["device"])
    importance = compute_ompq_importance(model.to(device), images.to(device), mode="ptq",
                                         bn_mode=cfg["bn_mode"])
    write_ompq_importance(args.out, importance)
    log.info("ompq: %d units from %d images; gamma %s", len(importance.units), importance.samples,
             " ".join(f"{g:.3f}" for g in importance.gamma))


if __name__ == "__main__":
    run_stage(main)
