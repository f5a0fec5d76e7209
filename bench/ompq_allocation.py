"""Time the OMPQ search (LP + rounding, docs/methods/ompq.md) on ResNet-50-sized problems.

Each repeat is one `ompq_policy` call: coefficients, LP, rounding and the unit-to-layer mapping,
with ResNet-50's real MACs and params at 224 px and a random theta. Problems: the 48 QAT units,
the 50 PTQ units, and one unit per searchable layer (52). The abstract's "9 seconds for
searching" (MobileNet-V2) includes the feature pass; the LP itself is the part timed here.

    python bench/ompq_allocation.py        # median of 20 repeats per problem
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import mpq.models  # noqa: E402
from mpq.cost import CostModel  # noqa: E402
from mpq.ompq.lp import ompq_policy  # noqa: E402
from mpq.ompq.units import ompq_units  # noqa: E402

BUDGETS = {"qat": ({"size_mb": 16.0}, 4, 8), "ptq": ({"size_mb": 9.0}, 2, 4)}


def problems(model, cost):
    for mode in ("qat", "ptq"):
        yield f"{mode} units", [list(u.layers) for u in ompq_units(model, mode)], *BUDGETS[mode]
    yield "per layer", [[n] for n in cost.names], *BUDGETS["qat"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--solver", default="exact", choices=("exact", "slsqp"))
    args = ap.parse_args()
    model = mpq.models.create("resnet50", num_classes=1000)
    cost = CostModel.from_model(model, 224)
    rng = np.random.default_rng(0)
    print(f"ResNet-50 at 224 px: {len(cost.names)} searchable layers, solver {args.solver}")
    for label, units, budget, lo, hi in problems(model, cost):
        theta = np.exp(-10 * rng.uniform(0, 1, len(units)))
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            w_bits, _, meta = ompq_policy(theta, units, cost, budget, lo, hi, solver=args.solver)
            times.append(time.perf_counter() - started)
        print(f"{label:>10}: {len(units):2d} units, median {statistics.median(times) * 1e3:7.3f} ms "
              f"(min {min(times) * 1e3:.3f}, max {max(times) * 1e3:.3f}) over {args.repeats}; "
              f"budget {budget}, bits [{lo}, {hi}], mean unit bits {np.mean(meta['unit_bits']):.2f}")


if __name__ == "__main__":
    main()
