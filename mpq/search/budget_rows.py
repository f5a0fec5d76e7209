"""Budget rows of the search: BitOps, size and the optional average-bit caps.

Each row is an exact integer knapsack row, so feasibility is decided on
integers and never on rounded floats (accounting.md sections 3-4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from ..errors import InputError


@dataclass(frozen=True)
class BudgetRow:
    """``sum_l scale[l] * w_l**uses_w * a_l**uses_a <= rhs`` over the searchable layers."""

    name: str
    rhs: int
    scale: tuple[int, ...]
    uses_w: bool
    uses_a: bool

    def cost(self, layer: int, w_bits: int, a_bits: int) -> int:
        c = self.scale[layer]
        if self.uses_w:
            c *= w_bits
        if self.uses_a:
            c *= a_bits
        return c


def _floor_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{what} must be a finite number, got {value!r}")
    return value if isinstance(value, int) else math.floor(value)  # integer rows: floor is exact


def budget_rows(macs: list[int], params: list[int], bitops_budget=None, size_budget_bits=None,
                avg_w_max=None, avg_a_max=None) -> list[BudgetRow]:
    """The rows a policy must satisfy; at least one of the two budgets is required."""
    if bitops_budget is None and size_budget_bits is None:
        raise InputError("the search needs a budget: give bitops_budget (searchable BitOps) and/or "
                         "size_budget_bits (searchable weight bits)")
    n = len(macs)
    rows = []
    if bitops_budget is not None:
        rows.append(BudgetRow("bitops", _floor_int(bitops_budget, "bitops_budget"), tuple(macs), True, True))
    if size_budget_bits is not None:
        rows.append(BudgetRow("size", _floor_int(size_budget_bits, "size_budget_bits"), tuple(params), True, False))
    ones = tuple([1] * n)
    # mean bits <= X  <=>  sum of bits <= N * X; the small epsilon absorbs float noise in N * X.
    if avg_w_max is not None:
        rows.append(BudgetRow("avg_w", math.floor(n * float(avg_w_max) + 1e-9), ones, True, False))
    if avg_a_max is not None:
        rows.append(BudgetRow("avg_a", math.floor(n * float(avg_a_max) + 1e-9), ones, False, True))
    return rows
