"""Dispatch one configured policy to its search method (mpq/registry.py) and time it."""
from __future__ import annotations

import time

from ..cost import CostModel
from ..registry import search_method


def search_policy(policy_cfg: dict, cost: CostModel, candidates, *, importance_path=None,
                  settings: dict | None = None, data=None, device="cpu", seed: int | None = None
                  ) -> tuple[list[int], list[int], dict]:
    """Returns (w_bits, a_bits, search metadata) for the searchable layers of `cost`.

    importance_path is the method's input: LIMPQ pickle (ilp), RFQuant supernet (greedy, which
    also needs `data` to score candidates on training images), OMPQ pickle (ompq).
    """
    method = search_method(policy_cfg["search"])
    t0 = time.perf_counter()
    w, a, meta = method.run(policy_cfg, cost, list(candidates), importance_path=importance_path,
                            settings=settings or {}, data=data, device=device, seed=seed)
    meta.setdefault("seconds", round(time.perf_counter() - t0, 6))
    return w, a, meta
