"""Stage: finetune recipe 'none' for RFQuant: take the policy's subnet from the supernet, calibrate
BN on training images and write it as an ordinary quantized checkpoint (no retraining)."""
from mpq.rfquant.subnet import save_recalibrated_subnet
from mpq.rfquant.supernet import load_supernet
from mpq.runtime import begin_stage, resolve_device, run_stage, stage_parser
from mpq.stage_common import check_supernet_model, load_data, load_policy_for


def main():
    ap = stage_parser(__doc__, "device, dataset, model, quant", optional="seed, recipe_name, recipe")
    ap.add_argument("--policy", required=True, help="policy.yaml from the search stage")
    ap.add_argument("--supernet", required=True, help="supernet.pt from train_supernet")
    ap.add_argument("--out", required=True, help="model.pt")
    args = ap.parse_args()
    spec = begin_stage(args)
    supernet, _, ckpt = load_supernet(args.supernet)
    policy = load_policy_for(args.policy, spec)
    check_supernet_model(ckpt, spec, args.supernet)
    save_recalibrated_subnet(args.out, supernet, policy, spec, load_data(spec), resolve_device(spec["device"]),
                             args.supernet)


if __name__ == "__main__":
    run_stage(main)
