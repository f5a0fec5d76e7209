"""Stage: search one policy (uniform / ilp / greedy / ompq) and write policy.yaml."""
from mpq import models
from mpq.build import fixed_bits_of
from mpq.cost import CostModel
from mpq.io import write_timing
from mpq.runtime import begin_stage, resolve_device, run_stage, stage_parser
from mpq.search.policy_search import search_policy, searched_policy
from mpq.registry import SEARCH_METHODS
from mpq.stage_common import load_data


def main():
    ap = stage_parser(__doc__, "policy_name, policy, model, image_size, quant",
                      optional="search (+ seed, device, dataset for greedy)")
    ap.add_argument("--importance", default=None, help="importance file of the policy's method")
    ap.add_argument("--fp32", default=None, help="FP32 model.pt: what an accuracy target (budget.accuracy_drop) "
                                                 "is measured against")
    ap.add_argument("--out", required=True, help="policy.yaml")
    args = ap.parse_args()
    spec = begin_stage(args)
    arch, num_classes, image_size = spec["model"]["arch"], spec["model"]["num_classes"], spec["image_size"]
    cost = CostModel.from_model(models.create(arch, num_classes=num_classes), image_size,
                                fixed_bits=fixed_bits_of(spec["quant"]))
    data, device = None, "cpu"
    if SEARCH_METHODS[spec["policy"]["search"]].needs_data:   # RFQuant scores subnets on training images
        data, device = load_data(spec), resolve_device(spec["device"])
    w, a, meta = search_policy(spec["policy"], cost, spec["quant"]["candidates"],
                               importance_path=args.importance, settings=spec.get("search"),
                               data=data, device=device, seed=spec.get("seed"), fp32_path=args.fp32)
    policy, cost, seconds = searched_policy(spec, cost, w, a, meta)
    policy.save(args.out, cost)
    write_timing(args.out, search=seconds)


if __name__ == "__main__":
    run_stage(main)
