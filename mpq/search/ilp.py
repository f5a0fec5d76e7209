"""LIMPQ's search: one (weight bits, act bits) pair per layer (limpq.md sections 5-6).

    minimise  sum_l A_l(a_l) + alpha * W_l(w_l)
    s.t.      sum_l MAC_l * w_l * a_l <= G_S      (BitOps, searchable part)
              sum_l P_l * w_l         <= S_S      (weight bits, searchable part)

Solvers: 'auto' (default) runs the exact multiple-choice-knapsack search of
``exact_mckp`` (proven optimal, about 10x faster than CBC on ResNet-50)
and hands over to a MILP (HiGHS if highspy imports, else CBC) if that search
grows too large, and to the greedy heuristic if no MILP solver runs; 'exact'
runs only that search; 'cbc' / 'highs' build the MILP in PuLP; 'greedy' is
the heuristic of section 6. ``IlpResult.solver`` names what actually
produced the answer. ``time_limit`` applies to the MILP solvers only.

Before solving, options that another option of the same layer beats in
objective and every budget are dropped; the optimum value is unchanged (see
``ChoiceProblem.without_dominated``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from mpq.search.budget_rows import BudgetRow, budget_rows
from mpq.search.choice_problem import ChoiceProblem
from mpq.search.exact_mckp import SearchTooLarge, solve_mckp, solve_mckp_front
from mpq.search.ilp_heuristic import greedy_downgrade
from mpq.search.pulp_milp import MilpUnavailable, highs_available, solve_milp
from ..errors import InputError

SOLVERS = ("auto", "exact", "cbc", "highs", "greedy")


class InfeasibleBudget(InputError):
    """A budget is below what the lowest allowed bits can reach."""


@dataclass
class IlpResult:
    w_bits: list[int]
    a_bits: list[int]
    objective: float
    status: str  # 'Optimal' (proven), 'Feasible' (MILP stopped by time_limit) or 'Heuristic'
    solver: str  # 'exact-mckp', 'cbc', 'highs', 'greedy' or 'greedy-fallback'
    seconds: float
    erased: list[tuple[str, str, int]]  # (layer, 'weight' | 'act', bit)


def allowed_bits(ind: dict[int, float], candidates_desc: list[int]) -> list[int]:
    """Bits kept after non-monotone erasure (limpq.md section 5), descending.

    A lower bit whose step is smaller than the next higher bit's step is a
    training artefact and is forbidden. The comparison uses the original
    values, the highest candidate always stays, and a forbidden bit does not
    forbid the bits below it.
    """
    kept = [candidates_desc[0]]
    for hi, lo in zip(candidates_desc, candidates_desc[1:]):
        if not ind[lo] < ind[hi]:
            kept.append(lo)
    return kept


def _check_inputs(names, weight_ind, act_ind, macs, params, candidates, alpha):
    n = len(names)
    if n == 0:
        raise InputError("the search needs at least one searchable layer")
    for what, seq in (("weight_ind", weight_ind), ("act_ind", act_ind), ("macs", macs), ("params", params)):
        if len(seq) != n:
            raise InputError(f"{what} has {len(seq)} entries but there are {n} layer names")
    cands = sorted({int(b) for b in candidates}, reverse=True)
    if not cands or cands[-1] <= 0:
        raise InputError(f"candidates must be positive bit-widths, got {candidates!r}")
    for kind, table in (("weight", weight_ind), ("act", act_ind)):
        for name, ind in zip(names, table):
            missing = [b for b in cands if b not in ind]
            if missing:
                raise InputError(f"{kind} indicator of {name!r} has no value for bits {missing}")
            bad = [b for b in cands if not math.isfinite(float(ind[b]))]
            if bad:
                raise InputError(f"{kind} indicator of {name!r} is not finite at bits {bad}")
    for what, seq in (("macs", macs), ("params", params)):
        if any(isinstance(v, bool) or int(v) != v or v < 0 for v in seq):
            raise InputError(f"{what} must be non-negative integers (exact accounting)")
    if not math.isfinite(float(alpha)):
        raise InputError(f"alpha must be finite, got {alpha!r}")
    return cands


def _erase(names, weight_ind, act_ind, cands, enabled):
    if not enabled:
        return [list(cands)] * len(names), [list(cands)] * len(names), []
    w_allowed, a_allowed, erased = [], [], []
    for name, w_ind, a_ind in zip(names, weight_ind, act_ind):
        w_allowed.append(allowed_bits(w_ind, cands))
        a_allowed.append(allowed_bits(a_ind, cands))
        erased += [(name, "weight", b) for b in cands if b not in w_allowed[-1]]
        erased += [(name, "act", b) for b in cands if b not in a_allowed[-1]]
    return w_allowed, a_allowed, erased


def _describe(row: BudgetRow, value: int, n: int) -> str:
    if row.name == "bitops":
        return f"{value / 1e9:.4f} G searchable BitOps"
    if row.name == "size":
        return f"{value} bits ({value / 8 / 2**20:.4f} MiB) of searchable weights"
    return f"mean {'weight' if row.name == 'avg_w' else 'act'} bits {value / n:.4f}"


def _check_feasible(rows, w_allowed, a_allowed):
    """Every row is smallest at each layer's lowest allowed (w, a), so checking rows one by one is exact."""
    n = len(w_allowed)
    for row in rows:
        smallest = sum(row.cost(l, w_allowed[l][-1], a_allowed[l][-1]) for l in range(n))
        if smallest > row.rhs:
            raise InfeasibleBudget(
                f"{row.name} budget {_describe(row, row.rhs, n)} is below the smallest achievable "
                f"{_describe(row, smallest, n)} (every layer at its lowest allowed bits); "
                "raise the budget or add lower candidates"
            )


def _choice_problem(w_allowed, a_allowed, weight_ind, act_ind, alpha, rows) -> ChoiceProblem:
    n = len(w_allowed)
    labels = [[(w, a) for w in w_allowed[l] for a in a_allowed[l]] for l in range(n)]
    width = max(len(x) for x in labels)
    obj = np.full((n, width), np.inf)
    costs = np.zeros((len(rows), n, width), dtype=np.int64)
    for l, options in enumerate(labels):
        for p, (w, a) in enumerate(options):
            obj[l, p] = float(act_ind[l][a]) + alpha * float(weight_ind[l][w])
            for r, row in enumerate(rows):
                costs[r, l, p] = row.cost(l, w, a)
    return ChoiceProblem(obj, costs, np.array([r.rhs for r in rows], dtype=np.int64), labels)


def _solve(full: ChoiceProblem, solver: str, time_limit, greedy):
    """Returns (problem the choice indexes, choice, status, solver label)."""
    if solver == "greedy":
        return full, greedy(), "Heuristic", "greedy"
    if solver in ("cbc", "highs"):
        # The MILP gets every allowed pair: CBC happened to branch faster on it
        # than on the dominance-pruned problem (0.4 s vs 0.7 s on ResNet-50).
        return (full, *solve_milp(full, solver, time_limit), solver)
    pruned = full.without_dominated()
    try:
        return pruned, solve_mckp(pruned), "Optimal", "exact-mckp"
    except SearchTooLarge as exc:
        if solver == "exact":
            raise SearchTooLarge(f"exact search gave up ({exc}); use solver='auto', 'cbc' or 'highs'") from None
    for name in (["highs"] if highs_available() else []) + ["cbc"]:
        try:
            return (full, *solve_milp(full, name, time_limit), name)
        except MilpUnavailable:
            continue
    return full, greedy(), "Heuristic", "greedy-fallback"


def solve_ilp(names, weight_ind: list[dict[int, float]], act_ind: list[dict[int, float]], macs: list[int],
              params: list[int], candidates: list[int], bitops_budget: int | None = None,
              size_budget_bits: int | None = None, alpha: float = 2.0, erase_non_monotone: bool = True,
              avg_w_max: float | None = None, avg_a_max: float | None = None, solver: str = "auto",
              time_limit: float | None = None) -> IlpResult:
    """Pick (w, a) bits per searchable layer; budgets cover the searchable layers only.

    The caller adds the fixed stem/classifier costs (accounting.md sections 3-5).
    Raises InfeasibleBudget before solving when a budget is out of reach.
    """
    started = time.perf_counter()
    if solver not in SOLVERS:
        raise InputError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    names = list(names)
    cands = _check_inputs(names, weight_ind, act_ind, macs, params, candidates, alpha)
    rows = budget_rows([int(v) for v in macs], [int(v) for v in params], bitops_budget, size_budget_bits,
                       avg_w_max, avg_a_max)
    w_allowed, a_allowed, erased = _erase(names, weight_ind, act_ind, cands, erase_non_monotone)
    _check_feasible(rows, w_allowed, a_allowed)
    full = _choice_problem(w_allowed, a_allowed, weight_ind, act_ind, alpha, rows)

    def greedy():
        w_bits, a_bits = greedy_downgrade(w_allowed, a_allowed, weight_ind, act_ind, alpha, rows)
        return [full.labels[l].index(pair) for l, pair in enumerate(zip(w_bits, a_bits))]

    problem, choice, status, label = _solve(full, solver, time_limit, greedy)
    if not problem.is_feasible(choice):
        raise RuntimeError(f"{label} returned a policy that breaks a budget (status {status})")
    return _result(problem, choice, weight_ind, act_ind, alpha, status, label, time.perf_counter() - started,
                   erased)


def _result(problem, choice, weight_ind, act_ind, alpha, status, label, seconds, erased) -> IlpResult:
    """The bits of `choice` and its objective, summed from the indicators as LIMPQ states it."""
    w_bits = [problem.labels[l][p][0] for l, p in enumerate(choice)]
    a_bits = [problem.labels[l][p][1] for l, p in enumerate(choice)]
    objective = sum(float(act_ind[l][a]) + alpha * float(weight_ind[l][w])
                    for l, (w, a) in enumerate(zip(w_bits, a_bits)))
    return IlpResult(w_bits, a_bits, objective, status, label, seconds, erased)


def solve_ilp_front(names, weight_ind: list[dict[int, float]], act_ind: list[dict[int, float]], macs: list[int],
                    params: list[int], candidates: list[int], *, sweep: str, budgets: list[int],
                    bitops_budget: int | None = None, size_budget_bits: int | None = None, alpha: float = 2.0,
                    erase_non_monotone: bool = True, avg_w_max: float | None = None,
                    avg_a_max: float | None = None) -> list[IlpResult]:
    """The proven optimum at every budget of a sweep of one row (`sweep`: 'bitops' or 'size',
    searchable part, `budgets` in any order; the other budgets fixed), in one exact search: the
    problem is built and pruned once and each optimum starts the proof of the next larger budget.
    Each result's `seconds` is the whole front's. Falls back to one solve_ilp per budget when the
    exact search grows too large."""
    started = time.perf_counter()
    if sweep not in ("bitops", "size") or not budgets:
        raise InputError(f"a front sweeps the bitops or size row over at least one budget, not {sweep!r}")
    names = list(names)
    cands = _check_inputs(names, weight_ind, act_ind, macs, params, candidates, alpha)
    swept = {"bitops": "bitops_budget", "size": "size_budget_bits"}[sweep]
    fixed = {"bitops_budget": bitops_budget, "size_budget_bits": size_budget_bits, swept: min(budgets)}
    rows = budget_rows([int(v) for v in macs], [int(v) for v in params], **fixed, avg_w_max=avg_w_max,
                       avg_a_max=avg_a_max)
    w_allowed, a_allowed, erased = _erase(names, weight_ind, act_ind, cands, erase_non_monotone)
    _check_feasible(rows, w_allowed, a_allowed)   # at the smallest budget: then at every one
    pruned = _choice_problem(w_allowed, a_allowed, weight_ind, act_ind, alpha, rows).without_dominated()
    row = [r.name for r in rows].index(sweep)
    try:
        choices = solve_mckp_front(pruned, row, budgets)
    except SearchTooLarge:
        return [solve_ilp(names, weight_ind, act_ind, macs, params, candidates, alpha=alpha,
                          erase_non_monotone=erase_non_monotone, avg_w_max=avg_w_max, avg_a_max=avg_a_max,
                          **{**fixed, swept: b})
                for b in budgets]
    seconds = time.perf_counter() - started
    return [_result(pruned, choice, weight_ind, act_ind, alpha, "Optimal", "exact-mckp-front", seconds, erased)
            for choice in choices]


def search_ilp(policy_cfg: dict, cost, candidates, *, importance_path=None, settings: dict | None = None,
               **_) -> tuple[list[int], list[int], dict]:
    """The `ilp` search (LIMPQ): the policy's budget, the LIMPQ importance pickle and the `search`
    settings (alpha, solver, erase_non_monotone; the schema's defaults for any not given)."""
    from ..config import section_defaults
    from ..importance_file import read_importance
    from ..io import sha256_file

    if importance_path is None:
        raise InputError("search 'ilp' needs an importance file; set the policy's importance")
    settings = section_defaults("search", {k: v for k, v in (settings or {}).items() if k != "greedy"})
    imp = read_importance(importance_path, expected_names=cost.names, candidates=list(candidates))
    budget = cost.searchable_budget(policy_cfg["budget"])
    avg = policy_cfg.get("avg_bits") or {}
    res = solve_ilp(cost.names, [imp.weight[n] for n in cost.names], [imp.act[n] for n in cost.names],
                    cost.macs, cost.params, list(candidates), bitops_budget=budget.bitops,
                    size_budget_bits=budget.size_bits, alpha=settings["alpha"],
                    erase_non_monotone=settings["erase_non_monotone"],
                    avg_w_max=avg.get("w"), avg_a_max=avg.get("a"), solver=settings["solver"])
    meta = {"method": "ilp", "importance": str(importance_path),
            "importance_sha256": sha256_file(importance_path), "solver": res.solver,
            "status": res.status, "objective": round(res.objective, 9), "alpha": settings["alpha"],
            "erased": [list(e) for e in res.erased], "seconds": round(res.seconds, 6)}
    return res.w_bits, res.a_bits, meta
