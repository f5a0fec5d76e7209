"""Stage: search one policy (uniform / ilp / greedy / ompq) and write policy.yaml."""
from mpq import models
from mpq.build import fixed_bits_of
from mpq.cost import CostModel
from mpq.io import write_timing
from mpq.policy import Policy
from mpq.runtime import begin_stage, resolve_device, run_stage, stage_parser
from mpq.search.policy_search import search_policy
from mpq.registry import SEARCH_METHODS
from mpq.stage_common import load_data


def main():
    ap = stage_parser(__doc__, "policy_name, policy, model, image_size, quant",
                      optional="search (+ seed, device, dataset for greedy)")
    ap.add_argument("--importance", default=None, help="importance file of the policy's method")
    ap.add_argument("--out", required=True, help="policy.yaml")
    args = ap.parse_args()
    spec = begin_stage(args)
    arch, num_classes, image_size = spec["model"]["arch"], spec["model"]["num_classes"], spec["image_size"]
    fixed = fixed_bits_of(spec["quant"])
    cost = CostModel.from_model(models.create(arch, num_classes=num_classes), image_size, fixed_bits=fixed)
    data, device = None, "cpu"
    if SEARCH_METHODS[spec["policy"]["search"]].needs_data:   # RFQuant scores subnets on training images
        data, device = load_data(spec), resolve_device(spec["device"])
    w, a, meta = search_policy(spec["policy"], cost, spec["quant"]["candidates"],
                               importance_path=args.importance, settings=spec.get("search"),
                               data=data, device=device, seed=spec.get("seed"))
    if "fixed_bits" in meta:   # OMPQ 'ptq' mode searches the stem's and classifier's weight bits too
        fixed = tuple(tuple(int(b) for b in pair) for pair in meta.pop("fixed_bits"))
        if fixed != cost.fixed_bits:
            cost = CostModel.from_model(models.create(arch, num_classes=num_classes), image_size, fixed_bits=fixed)
    budget = spec["policy"].get("budget")
    target = {}
    if budget:
        b = cost.searchable_budget(budget)
        target = {"requested": budget,
                  "bitops_g": None if b.total_bitops is None else round(b.total_bitops / 1e9, 6),
                  "size_mb": None if b.total_size_bits is None else round(b.total_size_bits / 8 / 2**20, 6)}
    search_seconds = meta.pop("seconds", None)   # a wall time: beside the policy, not in it
    policy = Policy(arch, num_classes, image_size, cost.names, w, a, fixed_bits=fixed,
                    meta={"name": spec["policy_name"], "budget": target, "search": meta})
    if not SEARCH_METHODS[meta["method"]].own_bit_range:   # uniform (e.g. W8A8) and OMPQ have their own
        policy.check_candidates(spec["quant"]["candidates"])
    policy.save(args.out, cost)
    write_timing(args.out, search=search_seconds)


if __name__ == "__main__":
    run_stage(main)
