"""Dispatch one configured policy to its search method and describe how it was found."""
from __future__ import annotations

import time

from ..cost import CostModel
from ..io import sha256_file
from .uniform import uniform_policy

METHODS = ("uniform", "ilp", "greedy", "ompq")


def search_policy(policy_cfg: dict, cost: CostModel, candidates, *, importance_path=None,
                  settings: dict | None = None, data=None, device="cpu", seed: int = 0
                  ) -> tuple[list[int], list[int], dict]:
    """Returns (w_bits, a_bits, search metadata) for the searchable layers of `cost`.

    importance_path is the method's input: LIMPQ pickle (ilp), RFQuant supernet (greedy, which
    also needs `data` to score candidates on training images), OMPQ pickle (ompq).
    """
    settings = settings or {}
    method = policy_cfg["search"]
    t0 = time.perf_counter()
    if method == "uniform":
        w, a = uniform_policy(len(cost.searchable), policy_cfg["bits"])
        return w, a, {"method": "uniform", "seconds": round(time.perf_counter() - t0, 6)}
    if method == "ilp":
        from ..importance.pickle_io import read_importance
        from .ilp import solve_ilp

        if importance_path is None:
            raise ValueError("search 'ilp' needs an importance file; set the policy's importance")
        imp = read_importance(importance_path, expected_names=cost.names, candidates=list(candidates))
        budget = cost.searchable_budget(policy_cfg["budget"])
        avg = policy_cfg.get("avg_bits") or {}
        res = solve_ilp(cost.names, [imp.weight[n] for n in cost.names], [imp.act[n] for n in cost.names],
                        cost.macs, cost.params, list(candidates), bitops_budget=budget.bitops,
                        size_budget_bits=budget.size_bits, alpha=settings.get("alpha", 2.0),
                        erase_non_monotone=settings.get("erase_non_monotone", True),
                        avg_w_max=avg.get("w"), avg_a_max=avg.get("a"), solver=settings.get("solver", "auto"))
        meta = {"method": "ilp", "importance": str(importance_path),
                "importance_sha256": sha256_file(importance_path), "solver": res.solver,
                "status": res.status, "objective": round(res.objective, 9), "alpha": settings.get("alpha", 2.0),
                "erased": [list(e) for e in res.erased], "seconds": round(res.seconds, 6)}
        return res.w_bits, res.a_bits, meta
    if method == "greedy":
        from .greedy import greedy_policy

        if importance_path is None or data is None:
            raise ValueError("search 'greedy' needs the RFQuant supernet and the training data; "
                             "set the policy's importance: rfquant")
        return greedy_policy(policy_cfg, cost, importance_path, data, settings, seed, device)
    if method == "ompq":
        from .ompq_search import search_ompq

        return search_ompq(policy_cfg, cost, importance_path, settings)
    raise ValueError(f"search method {method!r} is unknown; use one of {', '.join(METHODS)}")
