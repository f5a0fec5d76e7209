"""Exact multiple-choice knapsack search with Lagrangian bounds.

Why not just call a MILP solver: on the ResNet-50 golden problem the LP gap is
about 0.08 %, so CBC and HiGHS branch for 0.3-0.5 s. This search proves the
same optimum in a few tens of milliseconds.

Method (every pruning rule keeps at least one optimal solution):

1. Lagrangian dual. For multipliers mu >= 0 on the rows normalised to
   rhs = 1, ``phi(mu) = sum_l min_p (f_lp + mu . c_lp) - sum(mu)`` is a lower
   bound on the optimum. Coordinate ascent finds a good mu (any mu is valid).
2. Incumbent. A beam search over the layers (same bounds, best 32 states
   per layer) gives a feasible solution; its objective is the upper bound UB.
   In a front, it picks only among options whose reduced cost is within the
   neighbouring budget's duality gap (an optimum's options are within its own).
3. Reduced-cost fixing. ``f(x) >= phi(mu) + sum_l r_l(x_l)`` for feasible x,
   where r is the reduced cost under mu, so an option with r > UB - phi(mu)
   is in no solution better than UB and is dropped.
4. Breadth-first search over the layers. A partial choice (state) keeps its
   exact integer usage and its objective. It is dropped when
   - the cheapest completion of some row overflows its budget (exact ints);
   - for some mu in a small set around the dual optimum, its objective plus
     ``sum_{rest} min_p (f + mu . c) - mu . (1 - usage)`` exceeds UB: every
     completion costs at least that, because the rest uses at most
     ``1 - usage`` of each row;
   - another state has no larger objective and no larger usage in every row:
     any completion of the dropped state completes the other one as well,
     feasibly and no worse.
   What reaches the last layer therefore contains an optimal solution.
   If a layer would expand to more than MAX_STATES states, a 512-wide beam
   looks for a better UB and the proof is retried; if that fails too,
   SearchTooLarge tells the caller to use a MILP solver instead.

Floating point enters only in objective sums and bounds; bound tests carry a
tolerance of 1e-9 times the summed per-layer magnitudes, so rounding can only
keep extra states, never drop the optimum. Budgets are checked on exact
integers. The result is deterministic: every sort is stable and ties keep the
first state.
"""

from __future__ import annotations

import bisect

import numpy as np

from mpq.search.choice_problem import ChoiceProblem
from ..errors import MachineError

BEAM_WIDTHS = (32, 512)  # a wider beam is tried when the first incumbent leaves too many states
MAX_STATES = 50_000  # per layer before pruning; beyond it the caller falls back to a MILP
_SCALES = (0.0, 0.5, 0.8, 0.9, 0.95, 1.05, 1.1, 1.25, 1.5, 2.0)


class SearchTooLarge(MachineError):
    """The state space outgrew MAX_STATES; a MILP solver should take over."""


def _maximise_along(evaluate, guess: float = 1.0) -> float:
    """Argmax over t >= 0 of a concave piecewise-linear function.

    ``evaluate(t)`` returns (value, slope), the slope of a piece through t. Once the maximum is
    bracketed, the tangents at both ends meet above it; evaluating there either touches the
    maximum (value equals the tangents' height) or adds a piece and narrows the bracket, so a
    few evaluations find the kink (bisection to 1e-6 took about 26). Any multiplier gives a
    valid bound, so rounding here only affects speed. `guess` (> 0) is where the bracket starts.
    """
    v_lo, s_lo = evaluate(0.0)
    if s_lo <= 0:
        return 0.0
    lo, hi = 0.0, guess
    for _ in range(64):  # grow hi until the slope turns non-positive
        v_hi, s_hi = evaluate(hi)
        if s_hi <= 0:
            break
        lo, v_lo, s_lo, hi = hi, v_hi, s_hi, hi * 2.0
    best_t, best_v = (lo, v_lo) if v_lo >= v_hi else (hi, v_hi)
    for _ in range(64):
        if s_hi == 0 or s_lo <= s_hi:
            break
        t = (v_hi - v_lo + s_lo * lo - s_hi * hi) / (s_lo - s_hi)
        if not lo < t < hi:
            break
        height = v_lo + s_lo * (t - lo)
        v, slope = evaluate(t)
        if v > best_v:
            best_t, best_v = t, v
        if height - v <= 1e-12 * max(1.0, abs(v)) or slope == 0:
            break
        if slope > 0:
            lo, v_lo, s_lo = t, v, slope
        else:
            hi, v_hi, s_hi = t, v, slope
    return best_t


def lagrangian_multipliers(obj: np.ndarray, norm: np.ndarray, max_cycles: int = 20, start=None):
    """Coordinate ascent on phi from `start` (default 0); returns (mu, phi(mu)).

    ``obj`` is (N, P) with +inf for missing options, ``norm`` (m, N, P) the
    costs divided by their budgets. The slope of phi along mu_r is
    ``sum_l norm_r(argmin_l) - 1``. A neighbouring budget's mu is a close start.
    """
    m = norm.shape[0]
    mu = np.zeros(m) if start is None else np.maximum(np.asarray(start, dtype=np.float64), 0.0)
    layers = np.arange(obj.shape[0])
    mixed = obj + np.einsum("r,rnp->np", mu, norm)  # obj + mu . norm, kept in sync with mu

    def at(r, t):
        trial = mixed + (t - mu[r]) * norm[r]
        arg = trial.argmin(axis=1)
        value = float(trial[layers, arg].sum()) - (mu.sum() - mu[r] + t)
        return value, float(norm[r][layers, arg].sum()) - 1.0

    best = float(mixed.min(axis=1).sum()) - float(mu.sum())
    for _ in range(max_cycles):
        before = best
        for r in range(m):
            t = _maximise_along(lambda x: at(r, x), guess=mu[r] if mu[r] > 0 else 1.0)
            value = at(r, t)[0]
            if value >= best:
                mixed += (t - mu[r]) * norm[r]
                mu[r] = t
                best = value
        if best - before <= 1e-12 * max(1.0, abs(best)):
            break
    return mu, best


def _multiplier_set(mu: np.ndarray) -> np.ndarray:
    """A few multipliers around mu: the best one for a state depends on its leftover budget."""
    out = [mu]
    for s in _SCALES:
        out.append(mu * s)
    for r in range(len(mu)):
        for s in _SCALES:
            v = mu.copy()
            v[r] *= s
            out.append(v)
    return np.array(out)  # duplicates (e.g. mu * 0 per row) cost little and keep this cheap


_PAIRWISE_MAX = 128  # up to this many states the 2-row dominance filter compares all pairs
_EARLIER = np.triu(np.ones((_PAIRWISE_MAX, _PAIRWISE_MAX), dtype=bool), 1)  # [j, i]: j before i


def undominated_states(usage: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Indices (in a deterministic order) of states no other state dominates."""
    m = usage.shape[1]
    if m == 0:
        return np.array([int(np.argmin(value))]) if len(value) else np.zeros(0, dtype=np.int64)
    if m == 1:
        order = np.lexsort((value, usage[:, 0]))
        v = value[order]
        prev_best = np.minimum.accumulate(np.concatenate(([np.inf], v[:-1])))
        return order[v < prev_best]
    if m > 2:
        # Exact 3+-D dominance is costly in Python; dropping nothing is always valid.
        return np.lexsort(tuple(usage[:, r] for r in reversed(range(m))) + (value,))
    order = np.lexsort((usage[:, 1], usage[:, 0], value))
    if len(order) <= _PAIRWISE_MAX:
        # all pairs at once: a state stays unless an earlier one (in `order`) uses no more of
        # both rows; for the beam's few dozen states this is faster than the loop below
        u = usage[order]
        n = len(order)
        covered = (u[:, None, 0] <= u[None, :, 0]) & (u[:, None, 1] <= u[None, :, 1]) & _EARLIER[:n, :n]
        return order[~covered.any(axis=0)]
    xs: list[int] = []  # staircase of kept usages: x ascending, y strictly descending
    ys: list[int] = []
    keep = []
    for i, x, y in zip(order.tolist(), usage[order, 0].tolist(), usage[order, 1].tolist()):
        p = bisect.bisect_right(xs, x)
        if p and ys[p - 1] <= y:
            continue  # an earlier (no worse) state uses no more of either row
        a = bisect.bisect_left(xs, x)
        q = a
        while q < len(xs) and ys[q] >= y:
            q += 1
        xs[a:q] = [x]
        ys[a:q] = [y]
        keep.append(i)
    return np.array(keep, dtype=np.int64)


BUDGET_WEIGHT = 2.0  # the budgets' share of a layer's weight in the search order, against the objective's


def _layer_weight(obj, norm, alive) -> np.ndarray:
    """How much a layer's choice moves the objective and the budgets: the spread of each over its
    options, relative to that spread's total over the layers, the budgets' weighted BUDGET_WEIGHT.

    The search takes the heaviest layers first, so the bound and the leftover budget are settled
    early and the light layers cannot hide an overrun. On the 50-point ResNet-50 front of
    `bench/ilp.py --sweep 50` (with a 4-beam pre-selection) this order visited 240 k states, the
    budgets alone 528 k and the objective alone 440 k; weights 1.5 to 6 all gave 234-250 k."""
    def spread(values):
        return np.where(alive, values, -np.inf).max(axis=1) - np.where(alive, values, np.inf).min(axis=1)

    budgets = sum(spread(norm[r]) for r in range(norm.shape[0])) if norm.shape[0] else np.zeros(obj.shape[0])
    objective = spread(obj)
    return objective / max(objective.sum(), 1e-300) + BUDGET_WEIGHT * budgets / max(np.sum(budgets), 1e-300)


class _Levels:
    """Per-level data for searching the layers in a fixed order. Layers left with one option
    (reduced-cost fixing leaves about a quarter of them so in a proof) come first: `fixed` of
    them, which the search adds to its start state instead of stepping through."""

    def __init__(self, obj, cost, norm, rhs, alive, mus):
        n = obj.shape[0]
        single = alive.sum(axis=1) == 1
        self.order = np.lexsort((-_layer_weight(obj, norm, alive), ~single))
        self.fixed = int(single.sum())
        self.options = [np.flatnonzero(alive[l]) for l in self.order]
        self.obj = [obj[l, ids] for l, ids in zip(self.order, self.options)]
        self.cost = [cost[:, l, ids].T.copy() for l, ids in zip(self.order, self.options)]  # (p, m)
        m = len(rhs)
        big = np.iinfo(np.int64).max
        cmin = np.where(alive[None], cost, big).min(axis=2)[:, self.order]  # (m, n)
        self.min_rest = np.zeros((n + 1, m), dtype=np.int64)
        self.min_rest[:n] = np.cumsum(cmin[:, ::-1], axis=1)[:, ::-1].T
        self.mus = mus
        lagr = obj[None] + np.einsum("jr,rnp->jnp", mus, norm)
        lmin = np.where(alive[None], lagr, np.inf).min(axis=2)[:, self.order]  # (M, n)
        self.bound_rest = np.zeros((n + 1, len(mus)))
        self.bound_rest[:n] = np.cumsum(lmin[:, ::-1], axis=1)[:, ::-1].T


def _search(levels: _Levels, rhs: np.ndarray, ub: float, beam: int | None, tol: float):
    """Layer-by-layer search; returns (choice in original layer order, value) or None."""
    m = len(rhs)
    inv_rhs = 1.0 / np.maximum(rhs, 1).astype(np.float64)
    # bound = value + max_j (rest_j - mu_j . (1 - usage / rhs)): the usage term as one product
    per_unit = (levels.mus * inv_rhs).T  # (m, J)
    rest = levels.bound_rest - levels.mus.sum(axis=1)[None, :]  # (n + 1, J)
    room = rhs[None, :] - levels.min_rest  # (n + 1, m): usage a state may have so its rest still fits
    fixed = levels.fixed
    usage = sum((levels.cost[k] for k in range(fixed)), np.zeros((1, m), dtype=np.int64))
    value = np.array([sum(float(levels.obj[k][0]) for k in range(fixed))])
    if np.any(usage > room[fixed]):
        return None
    parents = [np.zeros(1, dtype=np.int64)] * fixed
    picks = [levels.options[k] for k in range(fixed)]
    for k in range(fixed, len(levels.options)):
        ids = levels.options[k]
        n, p = len(value), len(ids)
        if n * p > MAX_STATES:
            raise SearchTooLarge(f"{n * p} states at layer {k}")
        nu = (usage[:, None, :] + levels.cost[k][None]).reshape(-1, m)
        nv = (value[:, None] + levels.obj[k][None]).reshape(-1)
        fits = np.flatnonzero(np.all(nu <= room[k + 1], axis=1))  # state * p + option
        nu, nv = nu[fits], nv[fits]
        bound = nv + (rest[k + 1][None, :] + nu @ per_unit).max(axis=1)
        if beam is None:
            sel = np.flatnonzero(bound <= ub + tol)
            sel = sel[undominated_states(nu[sel], nv[sel])]
        else:
            # the 2 * beam best bounds, less the dominated ones (a 4 * beam pre-selection gave no
            # better incumbents on the ResNet-50 front and cost twice the filtering)
            sel = np.argsort(bound, kind="stable")[: 2 * beam]
            sel = np.sort(sel[undominated_states(nu[sel], nv[sel])])
            sel = sel[np.argsort(bound[sel], kind="stable")[:beam]]
        usage, value = nu[sel], nv[sel]
        parents.append(fits[sel] // p)
        picks.append(ids[fits[sel] % p])
        if not len(value):
            return None
    best = int(np.argmin(value))
    choice = [0] * len(levels.order)
    i = best
    for k in reversed(range(len(levels.order))):
        choice[levels.order[k]] = int(picks[k][i])
        i = int(parents[k][i])
    return choice, float(value[best])


def solve_mckp(problem: ChoiceProblem, incumbent: list[int] | None = None) -> list[int]:
    """Return an optimal option index per layer (raises SearchTooLarge when it would be slow).

    `incumbent`, a feasible choice (the optimum of a smaller budget, in a sweep), is the first
    upper bound; the beam search replaces it when it finds a better one.
    """
    return _solve(problem, incumbent)[0]


def _solve(problem: ChoiceProblem, incumbent=None, prices=None, gap_hint=None):
    """solve_mckp, the Lagrangian prices it used (mu per unit of each row) and its duality gap
    (optimum minus the dual bound). `prices` from a neighbouring budget start the multiplier
    search; `gap_hint`, that budget's duality gap, narrows the first beam (see _beam_gap)."""
    obj = problem.objective
    cost = problem.costs
    rhs = problem.rhs.astype(np.int64)
    alive = problem.exists
    scale = np.maximum(rhs, 1).astype(np.float64)
    norm = cost / scale[:, None, None]
    mu, phi = lagrangian_multipliers(np.where(alive, obj, np.inf), np.where(alive[None], norm, 0.0),
                                     start=None if prices is None else prices * scale)
    mixed = np.where(alive, obj + np.einsum("r,rnp->np", mu, norm), np.inf)
    reduced = mixed - mixed.min(axis=1, keepdims=True)
    mus = _multiplier_set(mu)
    # Rounding in sums of N terms of this size stays far below tol, so bound
    # tests with tol can only keep extra states.
    tol = 1e-9 * max(1.0, float(np.abs(np.where(alive, mixed, 0.0)).max(axis=1).sum()))

    ub, best = np.inf, None
    if incumbent is not None and problem.is_feasible(incumbent):
        best, ub = list(incumbent), problem.value(incumbent)
    for attempt, width in enumerate(BEAM_WIDTHS):
        gap = _beam_gap(ub - phi, gap_hint if attempt == 0 else None)
        found = _search(_Levels(obj, cost, norm, rhs, _within_gap(alive, reduced, gap, tol), mus),
                        rhs, np.inf, width, tol)
        if found is not None and found[1] < ub:
            best, ub = found
        if best is None:
            continue
        found = _prove(obj, cost, norm, rhs, alive, reduced, phi, mus, best, ub, tol)
        if found is not None:
            return found, mu / scale, problem.value(found) - phi
    raise SearchTooLarge(f"no proof of optimality within {MAX_STATES} states per layer")


def _beam_gap(incumbent_gap: float, gap_hint: float | None) -> float:
    """The reduced-cost limit of the options a beam may pick.

    Every option of an optimum has a reduced cost at most the duality gap (optimum minus phi),
    so the beam needs no option beyond it. The incumbent's gap bounds it from above; in a front,
    the neighbouring budget's duality gap is a far closer guess, and a beam over those few
    options is both cheaper and better aimed. A guess that is too small only costs a worse
    incumbent: the proof still searches every option within the incumbent's gap.
    """
    return incumbent_gap if gap_hint is None else min(incumbent_gap, gap_hint)


def _prove(obj, cost, norm, rhs, alive, reduced, phi, mus, best, ub, tol):
    """The optimum, by the full search below the incumbent `best` (value `ub`); None when the
    state space outgrows MAX_STATES."""
    keep = _within_gap(alive, reduced, ub - phi, tol)
    keep[np.arange(len(best)), best] = True  # the incumbent stays reachable despite rounding
    try:
        found = _search(_Levels(obj, cost, norm, rhs, keep, mus), rhs, ub, None, tol)
    except SearchTooLarge:
        return None
    return best if found is None or found[1] > ub else found[0]


def solve_mckp_front(problem: ChoiceProblem, row: int, budgets) -> list[list[int]]:
    """The optimum for every budget of row `row` (the other rows as in `problem`), in the order
    given. The largest budget is solved first: its optimum is optimal for every budget it fits
    (a tighter problem that it satisfies), which settles the top of a sweep where another row
    binds. The rest are solved from the smallest up, each optimum the next one's first incumbent,
    since a choice that fits a budget fits every larger one, and each one's Lagrangian prices the
    start of the next one's."""
    def at(budget, incumbent=None, prices=None, gap=None):
        rhs = problem.rhs.copy()
        rhs[row] = int(budget)
        return _solve(ChoiceProblem(problem.objective, problem.costs, rhs, problem.labels), incumbent, prices, gap)

    top, prices, _ = at(max(budgets))
    top_usage = int(problem.usage(top)[row])
    choices: list[list[int] | None] = [top if b >= top_usage else None for b in budgets]
    previous, gap = None, None
    for i in sorted(range(len(budgets)), key=lambda i: budgets[i]):
        if choices[i] is None:
            previous, prices, gap = at(budgets[i], previous, prices, gap)
            choices[i] = previous
    return choices


def _within_gap(alive, reduced, gap, tol):
    """Options that can still be part of a solution no worse than the incumbent."""
    return alive & (reduced <= gap + tol)
