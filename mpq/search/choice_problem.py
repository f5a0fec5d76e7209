"""The search as a multiple-choice knapsack: every layer picks one option.

Every solver (own exact search, PuLP MILP, greedy) sees the same arrays, so
their answers can be compared option by option.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ..errors import InputError

_INT_HEADROOM = 2**62  # keeps every partial sum of int64 costs far from overflow


@dataclass
class ChoiceProblem:
    """Minimise the summed objective of one option per layer under integer rows.

    Layer l has options 0 .. len(labels[l]) - 1; the padding columns after
    them have objective +inf and cost 0. ``costs[r, l, p]`` is its exact integer use of row r,
    and every row must satisfy ``sum <= rhs[r]``.
    """

    objective: np.ndarray  # (N, P) float64
    costs: np.ndarray  # (m, N, P) int64
    rhs: np.ndarray  # (m,) int64
    labels: list[list[tuple[int, int]]]  # (w_bits, a_bits) of each existing option

    def __post_init__(self):
        n, p = self.objective.shape
        if [len(x) for x in self.labels] != self.exists.sum(axis=1).tolist():
            raise InputError("every layer needs its options first and +inf padding after them")
        if self.costs.shape != (len(self.rhs), n, p):
            raise InputError(f"costs shape {self.costs.shape} does not match {(len(self.rhs), n, p)}")
        worst = self.costs.max(axis=2).sum(axis=1) if n else np.zeros(len(self.rhs))
        if np.any(worst >= _INT_HEADROOM) or np.any(np.abs(self.rhs) >= _INT_HEADROOM):
            raise InputError("budget costs exceed 2**62; they cannot be summed exactly in int64")

    @property
    def exists(self) -> np.ndarray:
        return np.isfinite(self.objective)

    def usage(self, choice: list[int]) -> np.ndarray:
        rows = np.arange(len(choice))
        return self.costs[:, rows, choice].sum(axis=1)

    def is_feasible(self, choice: list[int]) -> bool:
        return bool(np.all(self.usage(choice) <= self.rhs))

    def value(self, choice: list[int]) -> float:
        return float(sum(self.objective[l, p] for l, p in enumerate(choice)))

    def without_dominated(self) -> "ChoiceProblem":
        """Drop options that another option of the same layer beats or ties everywhere.

        If q costs no more than p in every row and its objective is no larger,
        swapping p for q in any feasible choice keeps it feasible and no worse,
        so the optimum value is unchanged. Exact ties keep the earlier option,
        which makes the result deterministic.
        """
        obj, cost = self.objective, self.costs
        exists = self.exists
        # le[l, q, p]: option q is at least as good as p in objective and every row.
        le = obj[:, :, None] <= obj[:, None, :]
        lt = obj[:, :, None] < obj[:, None, :]
        for r in range(cost.shape[0]):
            le &= cost[r][:, :, None] <= cost[r][:, None, :]
            lt |= cost[r][:, :, None] < cost[r][:, None, :]
        p = obj.shape[1]
        earlier = np.tril(np.ones((p, p), dtype=bool), k=-1).T  # earlier[q, p]: q < p
        beats = le & (lt | earlier[None]) & exists[:, :, None] & exists[:, None, :]
        keep = exists & ~beats.any(axis=1)
        width = int(keep.sum(axis=1).max()) if keep.size else 0
        new_obj = np.full((obj.shape[0], width), np.inf)
        new_cost = np.zeros((cost.shape[0], obj.shape[0], width), dtype=np.int64)
        new_labels = []
        for l in range(obj.shape[0]):
            cols = np.flatnonzero(keep[l])
            new_obj[l, : len(cols)] = obj[l, cols]
            new_cost[:, l, : len(cols)] = cost[:, l, cols]
            new_labels.append([self.labels[l][c] for c in cols])
        return ChoiceProblem(new_obj, new_cost, self.rhs.copy(), new_labels)
