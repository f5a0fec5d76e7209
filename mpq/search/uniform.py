"""Uniform baseline: every searchable layer at the same (w, a) bits."""
from __future__ import annotations


def uniform_policy(num_layers: int, bits) -> tuple[list[int], list[int]]:
    """bits: [w, a] or "wXaY"."""
    from ..cost import parse_wxay

    w, a = parse_wxay(bits) if isinstance(bits, str) else (int(bits[0]), int(bits[1]))
    return [w] * num_layers, [a] * num_layers


def search_uniform(policy_cfg: dict, cost, candidates, **_) -> tuple[list[int], list[int], dict]:
    """The `uniform` search: the policy's bits: [w, a] on every searchable layer."""
    w, a = uniform_policy(len(cost.searchable), policy_cfg["bits"])
    return w, a, {"method": "uniform"}
