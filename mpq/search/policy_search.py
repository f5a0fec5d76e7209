"""Dispatch one configured policy to its search method (mpq/registry.py) and time it."""
from __future__ import annotations

import time

from ..cost import CostModel
from ..registry import search_method


def search_policy(policy_cfg: dict, cost: CostModel, candidates, *, importance_path=None,
                  settings: dict | None = None, data=None, device="cpu", seed: int | None = None,
                  fp32_path=None) -> tuple[list[int], list[int], dict]:
    """Returns (w_bits, a_bits, search metadata) for the searchable layers of `cost`.

    importance_path is the method's input: LIMPQ pickle (ilp), RFQuant supernet (greedy, which
    also needs `data` to score candidates on training images), OMPQ pickle (ompq).
    """
    method = search_method(policy_cfg["search"])
    t0 = time.perf_counter()
    w, a, meta = method.run(policy_cfg, cost, list(candidates), importance_path=importance_path,
                            settings=settings or {}, data=data, device=device, seed=seed, fp32_path=fp32_path)
    meta.setdefault("seconds", round(time.perf_counter() - t0, 6))
    return w, a, meta


def searched_policy(spec: dict, cost: CostModel, w_bits, a_bits, meta: dict):
    """The Policy a search result becomes, with the cost model it is accounted in, and the search's
    wall time (kept beside policy.yaml, not in it, so identical runs write identical files)."""
    from .. import models
    from ..policy import Policy
    from ..registry import SEARCH_METHODS

    meta = dict(meta)
    fixed = cost.fixed_bits
    if "fixed_bits" in meta:   # OMPQ 'ptq' mode searches the stem's and classifier's weight bits too
        fixed = tuple(tuple(int(b) for b in pair) for pair in meta.pop("fixed_bits"))
        if fixed != cost.fixed_bits:
            model = models.create(spec["model"]["arch"], num_classes=spec["model"]["num_classes"])
            cost = CostModel.from_model(model, spec["image_size"], fixed_bits=fixed)
    budget = spec["policy"].get("budget")
    target = {}
    if budget and "accuracy_drop" in budget:   # a target on accuracy: no cost limit to report
        target = {"requested": budget, "bitops_g": None, "size_mb": None}
    elif budget:
        b = cost.searchable_budget(budget)
        target = {"requested": budget,
                  "bitops_g": None if b.total_bitops is None else round(b.total_bitops / 1e9, 6),
                  "size_mb": None if b.total_size_bits is None else round(b.total_size_bits / 8 / 2**20, 6)}
    seconds = meta.pop("seconds", None)
    policy = Policy(spec["model"]["arch"], spec["model"]["num_classes"], spec["image_size"], cost.names,
                    w_bits, a_bits, fixed_bits=fixed,
                    meta={"name": spec["policy_name"], "budget": target, "search": meta})
    if not SEARCH_METHODS[meta["method"]].own_bit_range:   # uniform (e.g. W8A8) and OMPQ have their own
        policy.check_candidates(spec["quant"]["candidates"])
    return policy, cost, seconds
