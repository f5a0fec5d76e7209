"""Stage: quantize the FP32 model to a policy and finetune it with a recipe (QAT; epochs 0 = no training)."""
from mpq.build import quantize_for_policy
from mpq.checkpoint import save_checkpoint
from mpq.runtime import begin_stage, resolve_device, run_stage, stage_parser
from mpq.stage_common import fp32_model_of, load_data, load_policy_for, loader_args, preprocessing_of
from mpq.train import resume
from mpq.train.kd import KdOptions
from mpq.train.qat import finetune


def main():
    ap = stage_parser(__doc__, "device, dataset, model, quant, recipe", optional="seed, recipe_name")
    ap.add_argument("--policy", required=True, help="policy.yaml from the search stage")
    ap.add_argument("--fp32", required=True, help="pretrained FP32 checkpoint")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    spec = begin_stage(args)
    arch, num_classes = spec["model"]["arch"], spec["model"]["num_classes"]
    model = fp32_model_of(spec, args.fp32)
    policy = load_policy_for(args.policy, spec)
    data = load_data(spec)
    resume.activate(args.out, spec)
    recipe = spec["recipe"]
    teacher = fp32_model_of(spec, args.fp32) if KdOptions.from_recipe(recipe).enabled else None
    quantize_for_policy(model, policy, spec["quant"], recipe)
    metrics = finetune(model, data, recipe, resolve_device(spec["device"]), teacher=teacher, **loader_args(spec))
    save_checkpoint(args.out, state_dict=model.state_dict(), arch=arch, num_classes=num_classes,
                    kind="quantized", config=spec, metrics=metrics, policy=policy.to_dict(),
                    quant=spec["quant"], recipe=recipe, preprocessing=preprocessing_of(data))
    resume.finish()


if __name__ == "__main__":
    run_stage(main)
