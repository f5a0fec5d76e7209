"""`mpq compare A.yaml B.yaml`: the two policies layer by layer, differences marked, both totals."""
from __future__ import annotations

from ..policy import Policy, PolicyError
from .common import emit, emit_json, format_table, format_totals, policy_cost, totals
from .show import layer_rows


def compare_rows(a: Policy, cost_a, b: Policy, cost_b) -> list[dict]:
    if a.names != b.names:
        raise PolicyError(f"the policies are for different layer lists ({a.arch}, {len(a.names)} layers vs "
                          f"{b.arch}, {len(b.names)} layers); compare policies of one model")
    out = []
    for ra, rb in zip(layer_rows(a, cost_a), layer_rows(b, cost_b)):
        out.append({"name": ra["name"], "role": ra["role"], "macs": ra["macs"], "params": ra["params"],
                    "a": {"w_bits": ra["w_bits"], "a_bits": ra["a_bits"], "bitops_share": ra["bitops_share"]},
                    "b": {"w_bits": rb["w_bits"], "a_bits": rb["a_bits"], "bitops_share": rb["bitops_share"]},
                    "differs": (ra["w_bits"], ra["a_bits"]) != (rb["w_bits"], rb["a_bits"])})
    return out


def format_compare(a: Policy, cost_a, b: Policy, cost_b, name_a: str, name_b: str) -> str:
    rows = compare_rows(a, cost_a, b, cost_b)
    body = format_table(
        ["", "layer", "MACs", "w A", "a A", "w B", "a B", "BitOps % A", "BitOps % B"],
        [["*" if r["differs"] else "", r["name"], f"{r['macs']:,}", r["a"]["w_bits"], r["a"]["a_bits"],
          r["b"]["w_bits"], r["b"]["a_bits"], f"{r['a']['bitops_share']:.2f}", f"{r['b']['bitops_share']:.2f}"]
         for r in rows], right={2, 3, 4, 5, 6, 7, 8})
    n_diff = sum(r["differs"] for r in rows)
    ta, tb = totals(a, cost_a), totals(b, cost_b)
    return "\n".join([
        f"A: {name_a}", f"B: {name_b}", body, "",
        f"{n_diff} of {len(rows)} layers differ (marked *)",
        f"A  {format_totals(ta)}", f"B  {format_totals(tb)}",
        f"B - A: BitOps {tb['bitops_g'] - ta['bitops_g']:+.4f} G, size {tb['size_mb'] - ta['size_mb']:+.4f} MiB"])


def run(args) -> None:
    a, b = Policy.load(args.a), Policy.load(args.b)
    cost_a, cost_b = policy_cost(a, source=args.a), policy_cost(b, source=args.b)
    if args.json:
        emit_json({"layers": compare_rows(a, cost_a, b, cost_b),
                   "totals": {"a": totals(a, cost_a), "b": totals(b, cost_b)}})
    else:
        emit(format_compare(a, cost_a, b, cost_b, args.a, args.b))


def register(sub) -> None:
    ap = sub.add_parser("compare", help="two policies side by side, differing layers marked",
                        description=__doc__.splitlines()[0])
    ap.add_argument("a", help="first policy.yaml")
    ap.add_argument("b", help="second policy.yaml")
    ap.add_argument("--json", action="store_true", help="print rows and totals as JSON")
    ap.set_defaults(run=run)
