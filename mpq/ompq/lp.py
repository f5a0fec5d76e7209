"""OMPQ's bit allocation (docs/methods/ompq.md): an LP over unit bits, then safe rounding.

    maximise  sum_i c_i * b_i,   c_i = mean(theta_i .. theta_{L-1})
    s.t.      sum_i P_i * b_i <= S   (weight bits; optionally also BitOps at fixed act bits)
              lo <= b_i <= hi

Working in bits (b = 8x) with integer rows keeps the budget exact. With one row the LP is a
fractional knapsack, solved exactly in rationals (`exact`); two rows go to HiGHS's LP. 'slsqp'
mimics the reference's scipy call for reference-like results only.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from ..errors import InputError, MachineError

SOLVERS = ("exact", "slsqp")
MAX_ROUNDING_SEARCH = 20
MIB_BITS = 8 * 2**20


@dataclass(frozen=True)
class Row:
    """sum_i cost[i] * b_i <= rhs, all integers."""

    name: str
    cost: tuple[int, ...]
    rhs: int


def lp_coefficients(theta) -> np.ndarray:
    """c_i: mean theta of unit i and everything after it (a unit is credited with downstream)."""
    theta = np.asarray(theta, dtype=np.float64)
    suffix = np.cumsum(theta[::-1])[::-1]
    return suffix / np.arange(len(theta), 0, -1)


def _describe(row: Row, value: int) -> str:
    return f"{value / MIB_BITS:.6f} MiB" if row.name == "size" else f"{value / 1e9:.6f} G BitOps"


def _check_feasible(rows: list[Row], lo: int, hi: int) -> None:
    if not 1 <= lo <= hi:
        raise InputError(f"ompq bits must satisfy 1 <= lo <= hi, got [{lo}, {hi}]")
    for row in rows:
        floor_cost = lo * sum(row.cost)
        if floor_cost > row.rhs:
            raise InputError(f"{row.name} budget is below the smallest reachable cost: every unit at {lo} "
                             f"bits needs {_describe(row, floor_cost)} against {_describe(row, row.rhs)} "
                             "available; raise the budget or lower ompq.bits")


def fractional_knapsack(c, cost, rhs: int, lo: int, hi: int) -> list[Fraction]:
    """Exact LP optimum for one row: fill units by c_i / cost_i, best first (ties: earlier unit)."""
    bits = [Fraction(lo)] * len(c)
    left = rhs - lo * sum(cost)
    order = sorted(range(len(c)), key=lambda i: (-c[i] / cost[i], i))
    for i in order:
        if left <= 0:
            break
        step = min(Fraction(hi - lo), Fraction(left, cost[i]))
        bits[i] += step
        left -= step * cost[i]
    return bits


def _highs_lp(c, rows: list[Row], lo: int, hi: int) -> list[float]:
    from scipy.optimize import linprog

    res = linprog(-np.asarray(c), A_ub=np.array([r.cost for r in rows], dtype=np.float64),
                  b_ub=np.array([r.rhs for r in rows], dtype=np.float64), bounds=[(lo, hi)] * len(c),
                  method="highs")
    if res.status != 0:
        raise MachineError(f"the OMPQ LP did not solve ({res.message})")
    return [float(v) for v in res.x]


def _slsqp(c, rows: list[Row], lo: int, hi: int) -> list[float]:
    """The reference's call: x = b/8, costs in MiB, start at x = hi/8, gradient -c."""
    from scipy.optimize import minimize

    c = np.asarray(c)
    a = np.array([r.cost for r in rows], dtype=np.float64) * 8 / MIB_BITS
    b = np.array([r.rhs for r in rows], dtype=np.float64) / MIB_BITS
    res = minimize(lambda x: -c @ x, np.full(len(c), hi / 8), jac=lambda x: -c, method="SLSQP",
                   bounds=[(lo / 8, hi / 8)] * len(c),
                   constraints=[{"type": "ineq", "fun": lambda x: b - a @ x, "jac": lambda x: -a}])
    return [float(v) * 8 for v in np.clip(res.x, lo / 8, hi / 8)]


def solve_lp(c, rows: list[Row], lo: int, hi: int, solver: str = "exact") -> list:
    """Continuous bits per unit: Fractions from the exact knapsack, floats otherwise."""
    if solver not in SOLVERS:
        raise InputError(f"ompq solver {solver!r} is unknown; use one of {', '.join(SOLVERS)}")
    _check_feasible(rows, lo, hi)
    if solver == "slsqp":
        return _slsqp(c, rows, lo, hi)
    if len(rows) == 1:
        return fractional_knapsack(c, rows[0].cost, rows[0].rhs, lo, hi)
    return _highs_lp(c, rows, lo, hi)


# -------------------------------------------------------------------------------------- rounding

def _as_integer(value, tol: float = 1e-9) -> int | None:
    if isinstance(value, Fraction):
        return int(value) if value.denominator == 1 else None
    nearest = round(value)
    return int(nearest) if abs(value - nearest) <= tol else None


def _bounds(x, rows: list[Row]) -> list[int]:
    """Integer caps for the rounded policy: the continuous cost t, never above the budget."""
    caps = []
    for row in rows:
        t = sum(k * v for k, v in zip(row.cost, x))
        cap = math.floor(t) if isinstance(t, Fraction) else math.floor(t + 1e-6 * max(1.0, abs(t)))
        caps.append(min(row.rhs, cap))
    return caps


def _search(x, c, rows: list[Row], caps: list[int], fractional: list[int]) -> list[int]:
    """Floor/ceil search: largest first-row cost within the caps, then largest sum c*b, then the
    lexicographically first; partial assignments already over a cap are pruned."""
    base = [_as_integer(v) if i not in fractional else math.floor(v) for i, v in enumerate(x)]
    spent = [sum(k * b for k, b in zip(row.cost, base)) for row in rows]   # every fractional at floor
    best, best_key = None, None
    bits = list(base)

    def visit(depth: int) -> None:
        nonlocal best, best_key
        if depth == len(fractional):
            key = (spent[0], sum(ci * b for ci, b in zip(c, bits)))
            if best_key is None or key > best_key:
                best, best_key = list(bits), key
            return
        i = fractional[depth]
        visit(depth + 1)                                  # floor first: ties keep the smaller bits
        if all(s + row.cost[i] <= cap for s, row, cap in zip(spent, rows, caps)):
            bits[i] += 1
            for r, row in enumerate(rows):
                spent[r] += row.cost[i]
            visit(depth + 1)
            bits[i] -= 1
            for r, row in enumerate(rows):
                spent[r] -= row.cost[i]

    visit(0)
    return best


def _round_and_repair(x, c, rows: list[Row], lo: int, hi: int) -> list[int]:
    """Half-to-even, then lower the unit with the least c per unit of cost saved until it fits."""
    bits = [min(hi, max(lo, round(v))) for v in x]
    for row in rows:
        while sum(k * b for k, b in zip(row.cost, bits)) > row.rhs:
            i = min((i for i in range(len(bits)) if bits[i] > lo), key=lambda i: (c[i] / row.cost[i], i))
            bits[i] -= 1
    return bits


def round_bits(x, c, rows: list[Row], lo: int, hi: int) -> list[int]:
    """Integer bits within every row's budget; floor/ceil of x where at most 20 units are fractional."""
    fractional = [i for i, v in enumerate(x) if _as_integer(v) is None]
    if len(fractional) > MAX_ROUNDING_SEARCH:
        return _round_and_repair(x, c, rows, lo, hi)
    return _search(x, c, rows, _bounds(x, rows), fractional)


# -------------------------------------------------------------------------------- the policy

def _rows(unit_layers, cost, budget, extra_params, act_bits: int, include_fixed: bool) -> list[Row]:
    """Size and/or BitOps rows over units. In 'ptq' mode the stem and classifier are units, so
    their bits leave the fixed part and the row's budget is the whole model's."""
    index = {layer.name: layer for layer in cost.all_layers}
    (_, stem_a), (_, cls_a) = cost.fixed_bits
    act = {cost.stem.name: stem_a, cost.classifier.name: cls_a}
    limits = cost.searchable_budget(budget)
    rows = []
    if limits.size_bits is not None:
        rhs = limits.total_size_bits if include_fixed else limits.size_bits
        rows.append(Row("size", tuple(sum(index[n].params for n in layers) + extra
                                      for layers, extra in zip(unit_layers, extra_params)), rhs))
    if limits.bitops is not None:
        rhs = limits.total_bitops if include_fixed else limits.bitops
        rows.append(Row("bitops", tuple(sum(index[n].macs * act.get(n, act_bits) for n in layers)
                                        for layers in unit_layers), rhs))
    return rows


def layer_bits(unit_layers: list[list[str]], unit_bits: list[int], cost) -> tuple[list[int], list[list[int]]]:
    """Every layer takes its unit's bits (a downsample those of its block's last conv).

    Returns (searchable-layer weight bits, [[stem w, a], [classifier w, a]]); a fixed layer in no
    unit keeps cost.fixed_bits, and activation bits of fixed layers never change.
    """
    bits_of = {n: int(b) for layers, b in zip(unit_layers, unit_bits) for n in layers}
    missing = [n for n in cost.names if n not in bits_of]
    if missing:
        raise InputError(f"units do not cover the searchable layers {missing[:3]}")
    (stem_w, stem_a), (cls_w, cls_a) = cost.fixed_bits
    fixed = [[bits_of.get(cost.stem.name, stem_w), stem_a], [bits_of.get(cost.classifier.name, cls_w), cls_a]]
    return [bits_of[n] for n in cost.names], fixed


def ompq_policy(theta, unit_layers: list[list[str]], cost, budget: dict, b_min: int, b_max: int, *,
                act_bits: int = 8, solver: str = "exact", extra_params=None
                ) -> tuple[list[int], list[int], dict]:
    """(w_bits, a_bits, meta) for the searchable layers of `cost` from per-unit theta.

    Units holding the stem or the classifier ('ptq' mode) give them their searched weight bits,
    returned as meta['fixed_bits']; otherwise those stay at cost.fixed_bits. `extra_params` adds
    per-unit counts to the size row only (the reference's BN parameters).
    """
    started = time.perf_counter()
    theta = np.asarray(theta, dtype=np.float64)
    if len(theta) != len(unit_layers) or not len(theta) or not np.isfinite(theta).all() or (theta < 0).any():
        raise InputError(f"theta needs one finite value >= 0 per unit ({len(unit_layers)} units), "
                         f"got {len(theta)}")
    extra_params = [0] * len(unit_layers) if extra_params is None else [int(e) for e in extra_params]
    fixed_names = {cost.stem.name, cost.classifier.name}
    include_fixed = any(fixed_names & set(layers) for layers in unit_layers)
    rows = _rows(unit_layers, cost, budget, extra_params, int(act_bits), include_fixed)
    c = lp_coefficients(theta)
    x = solve_lp(c, rows, int(b_min), int(b_max), solver)
    unit_bits = round_bits(x, c, rows, int(b_min), int(b_max))
    w_bits, fixed = layer_bits(unit_layers, unit_bits, cost)
    meta = {"solver": solver, "bits": [int(b_min), int(b_max)], "act_bits": int(act_bits),
            "unit_bits": unit_bits, "lp_bits": [round(float(v), 6) for v in x],
            "lp_objective": round(float(sum(ci * float(v) for ci, v in zip(c, x))), 9),
            "objective": round(float(sum(ci * b for ci, b in zip(c, unit_bits))), 9),
            "fixed_bits": fixed, "seconds": round(time.perf_counter() - started, 6)}
    return w_bits, [int(act_bits)] * len(cost.names), meta
