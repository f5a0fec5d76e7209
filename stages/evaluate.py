"""Stage: evaluate a finetuned quantized model on the test split. Writes metrics.json."""
import logging
import time

from mpq.build import finetuned_model
from mpq.cost import CostModel
from mpq import models
from mpq.data import make_loader
from mpq.io import atomic_write_json, write_timing
from mpq.report import policy_metrics
from mpq.runtime import begin_stage, resolve_device, run_stage, stage_parser
from mpq.stage_common import load_data
from mpq.train import evaluate

log = logging.getLogger("mpq")


def main():
    ap = stage_parser(__doc__, "device, dataset, model, policy_name, policy")
    ap.add_argument("--model", required=True, help="finetuned quantized checkpoint")
    ap.add_argument("--out", required=True, help="metrics.json")
    args = ap.parse_args()
    spec = begin_stage(args)
    model, policy, ckpt = finetuned_model(args.model)
    data = load_data(spec)
    device = resolve_device(spec["device"])
    t0 = time.perf_counter()
    result = evaluate(model.to(device), make_loader(data.test, spec["dataset"]["batch_size"], train=False,
                                                    workers=spec["dataset"]["workers"]), device)
    cost = CostModel.from_model(models.create(policy.arch, num_classes=policy.num_classes), policy.image_size,
                                fixed_bits=policy.fixed_bits)
    metrics = policy_metrics(spec["policy_name"], spec["policy"], result, policy, cost, ckpt.get("metrics"))
    if metrics.get("below_start"):
        log.warning("policy %s ended below its finetune start: top-1 %.2f at the start, %.2f at the end",
                    spec["policy_name"], metrics["start_top1"], result["top1"])
    atomic_write_json(args.out, metrics)
    write_timing(args.out, evaluate=time.perf_counter() - t0)


if __name__ == "__main__":
    run_stage(main)
