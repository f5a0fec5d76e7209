"""The `greedy` search method (RFQuant) as the registry calls it: a BitOps budget goes to the
bidirectional greedy search, an accuracy target to the bisection over its path."""
from __future__ import annotations

from ..cost import CostModel
from ..errors import InputError
from .accuracy_target import accuracy_target_policy
from .greedy_search import greedy_policy


def search_greedy(policy_cfg: dict, cost: CostModel, candidates=None, *, importance_path=None, settings=None,
                  data=None, device="cpu", seed=None, fp32_path=None, **_) -> tuple[list[int], list[int], dict]:
    """The `greedy` search (RFQuant): the policy's BitOps budget on the supernet at importance_path,
    scoring candidates on `data`'s training images; or its accuracy target (`budget.accuracy_drop`),
    measured against the FP32 model at fp32_path."""
    if importance_path is None or data is None:
        raise InputError("search 'greedy' needs the RFQuant supernet and the training data; "
                         "set the policy's importance: rfquant")
    if "accuracy_drop" in (policy_cfg.get("budget") or {}):
        return accuracy_target_policy(policy_cfg, cost, importance_path, fp32_path, data, settings,
                                      int(seed or 0), device)
    return greedy_policy(policy_cfg, cost, importance_path, data, settings, int(seed or 0), device)
