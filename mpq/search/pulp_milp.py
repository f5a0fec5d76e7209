"""Solve a ChoiceProblem as a MILP through PuLP (CBC or HiGHS).

Written against the API PuLP 3.3 and 4.x share (limpq.md section 6):
``LpProblem``, ``LpProblem.add_variable``, ``lpSum``, ``value`` and an explicit
solver object. The status is read as an int or an enum, never via the
``LpStatus`` dict that 4.x removed.
"""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np

from mpq.search.choice_problem import ChoiceProblem
from ..errors import InputError, MachineError


class MilpUnavailable(MachineError):
    """The requested MILP solver is not installed or does not run here."""


def highs_available() -> bool:
    return importlib.util.find_spec("highspy") is not None


def _make_solver(pulp, name: str, time_limit: float | None, objective_scale: float):
    # Gaps 0: the optimum, not "close to it" (HiGHS's default 1e-4 once stopped 1e-5 short).
    opts = dict(msg=False, gapRel=0, gapAbs=0, timeLimit=time_limit)
    if name == "highs":
        if not highs_available():
            raise MilpUnavailable("solver 'highs' needs the highspy package (pip install highspy)")
        solver = pulp.HiGHS(**opts)
    elif name == "cbc":
        # CBC only accepts a new incumbent 1e-5 better than the last one, so it
        # returned a point 1.0e-5 above the optimum of the golden quirk problem
        # while claiming "Optimal". Shrink that step to rounding size.
        opts["options"] = [f"increment {1e-9 * objective_scale:.3g}"]
        # PuLP 3.x bundles CBC as PULP_CBC_CMD; 4.x dropped it in favour of COIN_CMD.
        cls = getattr(pulp, "PULP_CBC_CMD", None) or pulp.COIN_CMD
        with warnings.catch_warnings():
            # 3.3 warns that PULP_CBC_CMD goes away in 4.0; the project pins pulp<3.4.
            warnings.simplefilter("ignore", DeprecationWarning)
            solver = cls(**opts)
    else:
        raise InputError(f"unknown MILP solver {name!r}; use 'cbc' or 'highs'")
    if not solver.available():
        raise MilpUnavailable(f"solver {name!r} is not available in this PuLP installation")
    return solver


def _status(pulp, problem) -> str:
    """Map PuLP's status to 'Optimal', 'Feasible', 'Infeasible', ... for both 3.x and 4.x."""
    status = problem.status
    if not isinstance(status, int):  # 4.x enum
        return str(getattr(status, "name", status)).replace("_", " ").title()
    consts = pulp.constants
    names = {consts.LpStatusOptimal: "Optimal", consts.LpStatusNotSolved: "Not Solved",
             consts.LpStatusInfeasible: "Infeasible", consts.LpStatusUnbounded: "Unbounded",
             consts.LpStatusUndefined: "Undefined"}
    text = names.get(status, f"status {status}")
    # CBC stopped by the time limit reports Optimal with an integer-feasible solution.
    if text == "Optimal" and getattr(problem, "sol_status", None) == consts.LpSolutionIntegerFeasible:
        text = "Feasible"
    return text


def solve_milp(problem: ChoiceProblem, solver: str, time_limit: float | None = None) -> tuple[list[int], str]:
    """Return (option index per layer, status); raises RuntimeError unless a solution came back."""
    import pulp

    finite = np.where(problem.exists, np.abs(problem.objective), 0.0)
    milp_solver = _make_solver(pulp, solver, time_limit, max(1.0, float(finite.max(axis=1).sum())))
    model = pulp.LpProblem("mpq_search", pulp.LpMinimize)
    xs = [[model.add_variable(f"x_{l}_w{w}_a{a}", 0, 1, pulp.LpBinary) for w, a in options]
          for l, options in enumerate(problem.labels)]
    cols = [(l, p, x) for l, row in enumerate(xs) for p, x in enumerate(row)]
    model += pulp.lpSum(float(problem.objective[l, p]) * x for l, p, x in cols)
    for l, row in enumerate(xs):
        model += pulp.lpSum(row) == 1, f"one_option_{l}"
    for r, rhs in enumerate(problem.rhs.tolist()):
        # Normalised to rhs = 1: raw BitOps coefficients reach 1e10 and once made CBC
        # stop 0.04 % above the optimum while claiming "Optimal".
        scale = 1.0 / max(rhs, 1)
        model += (pulp.lpSum(float(problem.costs[r, l, p]) * scale * x for l, p, x in cols) <= rhs * scale,
                  f"budget_{r}")
    model.solve(milp_solver)
    status = _status(pulp, model)
    if status not in ("Optimal", "Feasible"):
        raise RuntimeError(f"{solver} returned status {status!r} for the search ILP")
    choice = []
    for l, row in enumerate(xs):
        picked = [p for p, x in enumerate(row) if (pulp.value(x) or 0.0) > 0.5]
        if len(picked) != 1:
            raise RuntimeError(f"{solver} returned {len(picked)} options for layer {l} (status {status})")
        choice.append(picked[0])
    return choice, status
