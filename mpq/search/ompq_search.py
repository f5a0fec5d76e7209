"""The `ompq` search method: OMPQ settings + importance file -> one policy (docs/methods/ompq.md).

Settings come from the config's OMPQ section; a policy may override any of POLICY_KEYS.
"""
from __future__ import annotations

from ..io import sha256_file

DEFAULTS = {"mode": "qat", "beta": 1.0, "bits": None, "act_bits": 8, "solver": "exact",
            "count_bn_params": False}
POLICY_KEYS = ("mode", "beta", "bits", "act_bits", "solver", "count_bn_params")
DEFAULT_BITS = {"qat": (4, 8), "ptq": (2, 4)}


def ompq_settings(settings: dict | None, policy_cfg: dict) -> dict:
    """Defaults, then the OMPQ config section, then the policy's own overrides."""
    merged = {**DEFAULTS, **{k: v for k, v in (settings or {}).items() if k in DEFAULTS}}
    merged.update({k: policy_cfg[k] for k in POLICY_KEYS if k in policy_cfg})
    bits = merged["bits"] or DEFAULT_BITS.get(merged["mode"], (4, 8))
    if len(bits) != 2:
        raise ValueError(f"ompq bits must be [lo, hi], got {bits!r}")
    merged["bits"] = [int(bits[0]), int(bits[1])]
    return merged


def search_ompq(policy_cfg: dict, cost, importance_path, settings: dict | None = None
                ) -> tuple[list[int], list[int], dict]:
    """(w_bits, a_bits, meta); meta['fixed_bits'] holds the stem/classifier bits to record."""
    from ..importance.ompq import read_ompq_importance
    from .ompq_lp import ompq_policy

    if importance_path is None:
        raise ValueError("search 'ompq' needs the OMPQ importance file; set the policy's importance: ompq")
    s = ompq_settings(settings, policy_cfg)
    imp = read_ompq_importance(importance_path, cost, s["mode"])
    theta = imp.theta(s["beta"])
    extra = [imp.unit_bn_params[u] for u in imp.units] if s["count_bn_params"] else None
    w_bits, a_bits, found = ompq_policy(theta, [imp.unit_layers[u] for u in imp.units], cost,
                                        policy_cfg["budget"], *s["bits"], act_bits=s["act_bits"],
                                        solver=s["solver"], extra_params=extra)
    meta = {"method": "ompq", "mode": s["mode"], "beta": s["beta"],
            "count_bn_params": bool(s["count_bn_params"]), "importance": str(importance_path),
            "importance_sha256": sha256_file(importance_path), "units": list(imp.units),
            "theta": [round(float(t), 9) for t in theta], **found}
    return w_bits, a_bits, meta
