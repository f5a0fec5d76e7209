"""Stage: train the FP32 model, or import published weights (pretrain.weights) and finetune them
for pretrain.epochs (0: evaluate only). Writes model.pt (checkpoint) and metrics.json."""
from mpq import models
from mpq.checkpoint import save_checkpoint
from mpq.cost import CostModel
from mpq.io import atomic_write_json
from mpq.runtime import begin_stage, resolve_device, run_stage, stage_parser
from mpq.stage_common import load_data, loader_args
from mpq.train import resume
from mpq.train.fp32 import pretrain
from mpq.train.pretrained import start_from_weights


def main():
    ap = stage_parser(__doc__, "device, dataset, model, pretrain", optional="seed")
    ap.add_argument("--model-out", required=True)
    ap.add_argument("--metrics-out", required=True)
    args = ap.parse_args()
    spec = begin_stage(args)
    resume.activate(args.model_out, spec)
    data = load_data(spec)
    arch, num_classes = spec["model"]["arch"], spec["model"]["num_classes"]
    model = models.create(arch, num_classes=num_classes)
    train = start_from_weights if spec["pretrain"].get("weights") else pretrain
    metrics = train(model, data, spec["pretrain"], resolve_device(spec["device"]), **loader_args(spec))
    cost = CostModel.from_model(model.cpu(), data.image_size)
    metrics.update(bitops_g=cost.fp32_bitops / 1e9, size_mb=cost.fp32_size_mib, image_size=data.image_size)
    save_checkpoint(args.model_out, state_dict=model.state_dict(), arch=arch, num_classes=num_classes,
                    kind="fp32", config=spec, metrics=metrics)
    atomic_write_json(args.metrics_out, metrics)
    resume.finish()


if __name__ == "__main__":
    run_stage(main)
