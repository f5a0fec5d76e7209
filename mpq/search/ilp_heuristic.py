"""The ILP's greedy downgrade heuristic (limpq.md section 6), for machines without a MILP solver.

It is not optimal; results are labelled so nobody mistakes them for the ILP optimum.
"""

from __future__ import annotations

from mpq.search.budget_rows import BudgetRow
from ..errors import InputError


def greedy_downgrade(w_allowed: list[list[int]], a_allowed: list[list[int]],
                     w_ind: list[dict[int, float]], a_ind: list[dict[int, float]],
                     alpha: float, rows: list[BudgetRow]) -> tuple[list[int], list[int]]:
    """Start at the highest bits and lower one tensor at a time until every budget holds.

    Each step takes the move with the smallest objective increase per unit of
    budget saved, summed over the rows still violated (each row normalised by
    its right-hand side). Allowed lists are descending. Ties go to the lowest
    layer index, weights before activations.
    """
    n = len(w_allowed)
    pos = {"w": [0] * n, "a": [0] * n}
    allowed = {"w": w_allowed, "a": a_allowed}
    bits = {"w": [b[0] for b in w_allowed], "a": [b[0] for b in a_allowed]}
    usage = [sum(r.cost(l, bits["w"][l], bits["a"][l]) for l in range(n)) for r in rows]

    def move(l, kind, violated):
        """(ratio, l, kind) of lowering `kind` of layer l one step, or None."""
        if pos[kind][l] + 1 >= len(allowed[kind][l]):
            return None
        w, a = bits["w"][l], bits["a"][l]
        if kind == "w":
            nw, na = allowed["w"][l][pos["w"][l] + 1], a
            d_obj = alpha * (w_ind[l][nw] - w_ind[l][w])
        else:
            nw, na = w, allowed["a"][l][pos["a"][l] + 1]
            d_obj = a_ind[l][na] - a_ind[l][a]
        saved = sum((rows[i].cost(l, w, a) - rows[i].cost(l, nw, na)) / max(rows[i].rhs, 1) for i in violated)
        return None if saved <= 0 else (d_obj / saved, l, kind)

    cache, cached_for = {}, None
    while True:
        violated = tuple(i for i, r in enumerate(rows) if usage[i] > r.rhs)
        if not violated:
            break
        if violated != cached_for:  # savings depend on which rows are violated
            cache = {(l, k): move(l, k, violated) for l in range(n) for k in ("w", "a")}
            cached_for = violated
        moves = [m for m in cache.values() if m is not None]
        if not moves:
            raise InputError("greedy search cannot meet the budgets even at the lowest allowed bits")
        _, l, kind = min(moves, key=lambda m: (m[0], m[1], m[2] != "w"))
        old_w, old_a = bits["w"][l], bits["a"][l]
        pos[kind][l] += 1
        bits[kind][l] = allowed[kind][l][pos[kind][l]]
        for i, r in enumerate(rows):
            usage[i] += r.cost(l, bits["w"][l], bits["a"][l]) - r.cost(l, old_w, old_a)
        for k in ("w", "a"):
            cache[(l, k)] = move(l, k, violated)
    return bits["w"], bits["a"]
