"""Time the LIMPQ search on the ResNet-50 golden problem (limpq.md sections 6 and 8).

Each repeat is a full ``solve_ilp`` call (model build and solve). The
reference implementation (PuLP + CBC, no normalisation) needs 0.31-0.43 s on a
2-core machine.

    python bench/ilp.py                 # every available solver, 20 repeats
    python bench/ilp.py --breakdown     # where a CBC solve spends its time
    python bench/ilp.py --sweep 50      # a 50-point BitOps front (w2a3 .. w6a6) in one search,
                                        # beside 50 separate exact and CBC solves
    python bench/ilp.py --sweep 50 --front-only --repeats 8   # the front search alone
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import mpq.models  # noqa: E402
from mpq.cost import CostModel  # noqa: E402
from mpq.importance_file import read_importance  # noqa: E402
from mpq.search.ilp import solve_ilp, solve_ilp_front  # noqa: E402
from mpq.search.pulp_milp import highs_available  # noqa: E402

DEFAULT_PICKLE = REPO.parent / "shared" / "data" / "limpq-resnet50-indicators.pkl"
CANDIDATES = [6, 5, 4, 3, 2]
REFERENCE_SECONDS = (0.31, 0.43)


def synthetic_indicators(names, seed=0):
    """Same shape as the reference file: steps grow as bits fall, act about 3x weight."""
    rng = random.Random(seed)

    def rising(start, lo, hi):
        steps, value = {}, start
        for b in CANDIDATES:  # descending
            steps[b] = value
            value *= rng.uniform(lo, hi)
        return steps

    weight = [rising(rng.uniform(0.005, 0.05), 1.2, 1.8) for _ in names]
    act = [rising(rng.uniform(0.05, 0.3), 1.3, 1.6) for _ in names]
    return weight, act


def load_problem(pickle_path: Path, bitops: str, ratio: float):
    cost = CostModel.from_model(mpq.models.create("resnet50", num_classes=1000), 224)
    if pickle_path.is_file():
        imp = read_importance(pickle_path, expected_names=cost.names, candidates=CANDIDATES)
        weight, act = [imp.weight[n] for n in cost.names], [imp.act[n] for n in cost.names]
        source = str(pickle_path)
    else:
        weight, act = synthetic_indicators(cost.names)
        source = f"synthetic indicators (seed 0; {pickle_path} is absent)"
    budget = cost.searchable_budget({"bitops": bitops, "compression_ratio": ratio})
    kwargs = dict(names=cost.names, weight_ind=weight, act_ind=act, macs=cost.macs, params=cost.params,
                  candidates=CANDIDATES, bitops_budget=budget.bitops, size_budget_bits=budget.size_bits)
    return kwargs, source


def time_solver(kwargs, solver: str, repeats: int):
    seconds, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = solve_ilp(**kwargs, solver=solver)
        seconds.append(time.perf_counter() - start)
    return seconds, result


def _timed(owner, attr, totals, key):
    """Wrap owner.attr so its wall time accumulates in totals[key]; returns an undo function."""
    original = getattr(owner, attr)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[key] = totals.get(key, 0.0) + time.perf_counter() - start

    setattr(owner, attr, wrapper)
    return lambda: setattr(owner, attr, original)


def cbc_breakdown(kwargs, repeats: int):
    """Median split of a CBC solve: our preparation, PuLP model building, MPS file, CBC process."""
    import subprocess

    import pulp

    import mpq.search.ilp as ilp_module

    rows = []
    for _ in range(repeats):
        totals: dict[str, float] = {}
        undo = [_timed(ilp_module, "solve_milp", totals, "milp"), _timed(pulp.LpProblem, "solve", totals, "solve"),
                _timed(pulp.LpProblem, "writeMPS", totals, "mps"),
                _timed(subprocess.Popen, "wait", totals, "cbc")]
        try:
            start = time.perf_counter()
            solve_ilp(**kwargs, solver="cbc")
            total = time.perf_counter() - start
        finally:
            for u in reversed(undo):
                u()
        rows.append({"total": total, "prepare (erasure, arrays)": total - totals["milp"],
                     "PuLP model building": totals["milp"] - totals["solve"], "writeMPS": totals["mps"],
                     "CBC process": totals["cbc"],
                     "rest of PuLP solve (files, read)": totals["solve"] - totals["mps"] - totals["cbc"]})
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def sweep_front(kwargs, points: int, repeats: int, solvers) -> None:
    """A BitOps front from uniform w2a3 to w6a6 (the size budget fixed): one front search against
    one solve per budget with each solver, all on the same budgets; the front must equal the
    separate exact optima point by point."""
    macs = sum(kwargs["macs"])
    budgets = [int(macs * (6 + 30 * k / max(points - 1, 1))) for k in range(points)]
    single = {k: v for k, v in kwargs.items() if k != "bitops_budget"}
    fronts = []
    for _ in range(repeats):
        start = time.perf_counter()
        front = solve_ilp_front(**single, sweep="bitops", budgets=budgets)
        fronts.append(time.perf_counter() - start)
    print(f"{points}-point BitOps front (w2a3 .. w6a6, size budget fixed):")
    print(f"  one front search      {statistics.median(fronts):8.3f} s (median of {repeats}; min {min(fronts):.3f} s)")
    for solver in solvers:
        start = time.perf_counter()
        separate = [solve_ilp(**single, bitops_budget=b, solver=solver) for b in budgets]
        seconds = time.perf_counter() - start
        same = sum(abs(a.objective - b.objective) <= 1e-9 * abs(b.objective) for a, b in zip(front, separate))
        print(f"  {points} x {solver:10} {seconds:8.3f} s  ({seconds / statistics.median(fronts):.1f}x the front; "
              f"{same}/{points} points with the front's objective)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pickle", type=Path, default=DEFAULT_PICKLE, help="importance file (LIMPQ format)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--solvers", nargs="+", default=None,
                        help="default: auto, exact, cbc and highs if highspy is installed")
    parser.add_argument("--bitops", default="w3a4", help="BitOps budget as wXaY")
    parser.add_argument("--compression-ratio", type=float, default=12.2)
    parser.add_argument("--breakdown", action="store_true", help="also profile where a CBC solve spends time")
    parser.add_argument("--sweep", type=int, metavar="N", help="time an N-point BitOps front instead")
    parser.add_argument("--front-only", action="store_true",
                        help="with --sweep: only the front search, not the separate solves beside it")
    args = parser.parse_args(argv)

    kwargs, source = load_problem(args.pickle, args.bitops, args.compression_ratio)
    if args.sweep:
        print(f"problem: ResNet-50, 52 layers x {len(CANDIDATES)} candidates, compression_ratio "
              f"{args.compression_ratio}; indicators: {source}")
        solvers = [] if args.front_only else args.solvers or ["exact", "cbc"]
        sweep_front(kwargs, args.sweep, args.repeats if args.front_only else min(args.repeats, 5), solvers)
        return
    solvers = args.solvers or ["auto", "exact", "cbc"] + (["highs"] if highs_available() else [])
    lo, hi = REFERENCE_SECONDS
    print(f"problem: ResNet-50, 52 layers x {len(CANDIDATES)} candidates, budgets bitops {args.bitops} "
          f"+ compression_ratio {args.compression_ratio}; indicators: {source}")
    print(f"{'solver':8} {'label':12} {'median s':>9} {'min s':>8} {'max s':>8} {'vs 0.31-0.43 s':>16} objective")
    for solver in solvers:
        seconds, res = time_solver(kwargs, solver, args.repeats)
        med = statistics.median(seconds)
        print(f"{solver:8} {res.solver:12} {med:9.4f} {min(seconds):8.4f} {max(seconds):8.4f} "
              f"{lo / med:7.1f}-{hi / med:.1f}x    {res.objective:.6f} ({res.status})")
    if args.breakdown:
        print("cbc breakdown (median):")
        for name, value in cbc_breakdown(kwargs, args.repeats).items():
            print(f"  {name:34} {value:.4f} s")


if __name__ == "__main__":
    main()
