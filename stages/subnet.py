"""Stage: finetune recipe 'none' for RFQuant: take the policy's subnet from the supernet, calibrate
BN on training images and write it as an ordinary quantized checkpoint (no retraining)."""
from mpq.checkpoint import save_checkpoint
from mpq.rfquant.subnet import export_subnet, quant_config_for_export
from mpq.rfquant.supernet import calibrate_bn, load_supernet
from mpq.runtime import begin_stage, resolve_device, run_stage, stage_parser
from mpq.stage_common import load_data, load_policy_for, loader_args, preprocessing_of
from mpq.errors import InputError


def main():
    ap = stage_parser(__doc__, "device, dataset, model, quant", optional="seed, recipe_name, recipe")
    ap.add_argument("--policy", required=True, help="policy.yaml from the search stage")
    ap.add_argument("--supernet", required=True, help="supernet.pt from train_supernet")
    ap.add_argument("--out", required=True, help="model.pt")
    args = ap.parse_args()
    spec = begin_stage(args)
    arch, num_classes = spec["model"]["arch"], spec["model"]["num_classes"]
    supernet, _, ckpt = load_supernet(args.supernet)
    policy = load_policy_for(args.policy, spec)
    if ckpt["arch"] != arch or ckpt["num_classes"] != num_classes:
        raise InputError(f"{args.supernet}: supernet is for {ckpt['arch']}/{ckpt['num_classes']} classes but the "
                         f"model is {arch}/{num_classes}; rerun train_supernet")
    data = load_data(spec)
    device = resolve_device(spec["device"])
    model = export_subnet(supernet, policy, spec["quant"]).to(device)
    loading = loader_args(spec)
    images = int(spec["recipe"]["bn_recalibration_images"])
    used = calibrate_bn(model, data.train, device, images=images, batch_size=loading["batch_size"],
                        seed=loading["seed"] + 1, workers=loading["workers"])
    save_checkpoint(args.out, state_dict=model.state_dict(), arch=arch, num_classes=num_classes,
                    kind="quantized", config=spec, metrics={"epochs": 0, "bn_images": used},
                    policy=policy.to_dict(), quant=quant_config_for_export(spec["quant"]),
                    supernet=str(args.supernet), preprocessing=preprocessing_of(data))


if __name__ == "__main__":
    run_stage(main)
