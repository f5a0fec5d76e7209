"""Stage: post-training quantisation of the FP32 model to a policy (AdaRound + block reconstruction)."""
from mpq.quant.ptq import calibration_set, ptq_quantize, ptq_settings
from mpq.io import write_timing
from mpq.quant.ptq_model import save_ptq_model
from mpq.runtime import begin_stage, resolve_device, run_stage, stage_parser
from mpq.stage_common import fp32_model_of, load_data, load_policy_for, preprocessing_of


def main():
    ap = stage_parser(__doc__, "device, dataset, model, recipe", optional="seed, quant, recipe_name")
    ap.add_argument("--policy", required=True, help="policy.yaml from the search stage")
    ap.add_argument("--fp32", required=True, help="pretrained FP32 checkpoint")
    ap.add_argument("--out", required=True, help="quantized model.pt (kind 'ptq')")
    args = ap.parse_args()
    spec = begin_stage(args)
    policy = load_policy_for(args.policy, spec)
    recipe = ptq_settings(spec["recipe"])
    model = fp32_model_of(spec, args.fp32)
    seed = int(spec["seed"])
    data = load_data(spec)
    images = calibration_set(data.train, recipe, seed)
    device = resolve_device(spec["device"])
    model, metrics = ptq_quantize(model.to(device), policy, images, recipe, seed=seed)
    seconds = metrics.pop("seconds", None)   # a wall time: beside the model, not in it
    save_ptq_model(args.out, model, policy, config=spec, metrics=metrics, recipe=recipe,
                   preprocessing=preprocessing_of(data))
    write_timing(args.out, ptq=seconds)


if __name__ == "__main__":
    run_stage(main)
