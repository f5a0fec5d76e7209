"""`mpq show POLICY.yaml`: per-layer table (MACs, params, bits, BitOps share) and totals."""
from __future__ import annotations

from ..policy import Policy
from .common import emit, emit_json, format_table, format_totals, policy_cost, totals

HEADERS = ["layer", "role", "MACs", "params", "w", "a", "BitOps %"]


def layer_rows(policy: Policy, cost) -> list[dict]:
    """Stem, searchable layers and classifier with their bits and share of the total BitOps."""
    table = cost.layer_table(policy.w_bits, policy.a_bits)
    total = sum(r["bitops"] for r in table)
    roles = ["stem"] + ["searchable"] * len(cost.searchable) + ["classifier"]
    return [{**r, "role": role, "bitops_share": 100.0 * r["bitops"] / total if total else 0.0}
            for r, role in zip(table, roles)]


def format_show(policy: Policy, cost, title: str = "") -> str:
    rows = layer_rows(policy, cost)
    body = format_table(HEADERS, [[r["name"], r["role"] if r["role"] != "searchable" else "", f"{r['macs']:,}",
                                   f"{r['params']:,}", r["w_bits"], r["a_bits"], f"{r['bitops_share']:.2f}"]
                                  for r in rows], right={2, 3, 4, 5, 6})
    head = (f"{title}{policy.arch}, {policy.num_classes} classes, {policy.image_size}px, "
            f"{len(policy.names)} searchable layers")
    return "\n".join([head, body, "", format_totals(totals(policy, cost))])


def run(args) -> None:
    policy = Policy.load(args.policy)
    cost = policy_cost(policy, source=args.policy)
    if args.json:
        emit_json({"model": {"arch": policy.arch, "num_classes": policy.num_classes,
                             "image_size": policy.image_size},
                   "layers": layer_rows(policy, cost), "totals": totals(policy, cost)})
    else:
        emit(format_show(policy, cost))


def register(sub) -> None:
    ap = sub.add_parser("show", help="per-layer bits, MACs, params, BitOps share and totals of a policy",
                        description=__doc__.splitlines()[0])
    ap.add_argument("policy", help="policy.yaml")
    ap.add_argument("--json", action="store_true", help="print the rows and totals as JSON")
    ap.set_defaults(run=run)
