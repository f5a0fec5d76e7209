"""Budget sweeps: one config policy whose budget is a list or a range becomes one policy per point.

A point is an ordinary policy (its own policy.yaml, model, metrics and summary row) named
`<sweep>-<point>` after its budget value, and carries `front: <sweep>` so the figures draw the points
as one curve. Each point's spec holds only its own budget, never the sweep, so adding a value to a
list, or widening `points` so that old points stay on the grid, reruns none of the others.

- a list:  `size_mb: [0.02, 0.03]`, `bitops: [w2a3, w4a4]` -> points named by value (`-0.02`, `-w2a3`)
- a range: `size_mb: {sweep: [0.02, 0.05], points: 4}` -> evenly spaced values, rounded to 4
  significant digits (the name and the budget are the same number).
- a BitOps range between uniform costs: `bitops: {sweep: [w2a3, w6a6], points: 5}` -> points at
  fractions 0, 0.25, ... of the way (`-f0.25`), budget `bitops: {between: [w2a3, w6a6], at: 0.25}`:
  BitOps depend on the model, which the workflow does not build at DAG time, so the search resolves it.
"""
from __future__ import annotations

from .errors import ConfigError

SIGNIFICANT = 4   # digits a range value is rounded to (names stay short and equal the budget)


def is_point(value) -> bool:
    """A budget value that is one point: a number, a 'wXaY' string or a resolved `between`."""
    return not isinstance(value, (list, dict)) or (isinstance(value, dict) and "between" in value)


def swept_key(budget: dict | None) -> str | None:
    """The budget key a policy sweeps, or None; more than one swept key is an error."""
    keys = [k for k, v in (budget or {}).items() if not is_point(v)]
    if len(keys) > 1:
        raise ConfigError(f"config error: a budget may sweep one key, not {' and '.join(keys)}; "
                          "keep one a single value")
    return keys[0] if keys else None


def _number(value: float) -> str:
    return format(value, f".{SIGNIFICANT}g").replace("+", "")


def _rounded(value: float) -> float:
    return float(_number(value))


def sweep_points(key: str, sweep) -> list[tuple[str, object]]:
    """(name suffix, budget value) of every point of a swept budget key, in the order given."""
    if isinstance(sweep, list):
        return [(v if isinstance(v, str) else _number(v), v) for v in sweep]
    lo, hi = sweep["sweep"]
    n = int(sweep["points"])
    if lo == hi:
        raise ConfigError(f"config error: budget {key} sweeps from {lo} to itself; give two different ends")
    if isinstance(lo, str):   # between two uniform BitOps: the fraction of the way
        fractions = [_rounded(k / (n - 1)) for k in range(n)]
        return [(f"f{_number(t)}", {"between": [lo, hi], "at": t}) for t in fractions]
    values = [_rounded(lo + (hi - lo) * k / (n - 1)) for k in range(n)]
    if len(set(values)) < n:
        raise ConfigError(f"config error: budget {key} {sweep}: {n} points between {lo} and {hi} round to "
                          f"repeated values at {SIGNIFICANT} digits; use fewer points or wider ends")
    return [(_number(v), v) for v in values]


def expand_sweeps(policies: dict) -> dict:
    """The policies with every sweep replaced by its points (in place of the sweep, in order)."""
    out: dict = {}
    for name, policy in policies.items():
        key = swept_key(policy.get("budget"))
        if key is None:
            _add(out, name, policy, policies)
            continue
        for suffix, value in sweep_points(key, policy["budget"][key]):
            point = {**policy, "budget": {**policy["budget"], key: value}, "front": policy.get("front", name)}
            _add(out, f"{name}-{suffix}", point, policies, sweep=name)
    return out


def _add(out: dict, name: str, policy: dict, given: dict, sweep: str | None = None) -> None:
    if name in out or (sweep is not None and name in given):
        raise ConfigError(f"config error: policies.{sweep or name}: the point {name!r} is also a policy's name; "
                          "rename one of them")
    out[name] = policy
