"""The `ompq` search method: OMPQ settings + importance file -> one policy (docs/methods/ompq.md).

Settings come from the config's OMPQ section; a policy may override any of POLICY_KEYS.
"""
from __future__ import annotations

from ..config import section_defaults
from ..io import sha256_file
from ..errors import InputError

POLICY_KEYS = ("mode", "beta", "bits", "act_bits", "solver", "count_bn_params")
# The reference's weight-bit range [b_min, b_max] of each mode, where neither config nor policy gives one.
REFERENCE_BITS = {"qat": (4, 8), "ptq": (2, 4)}


def ompq_settings(section: dict | None, policy_cfg: dict) -> dict:
    """The search keys of the config's importance.ompq section (schema defaults for any not given),
    overridden by the policy's own, with the bit range resolved: what the search spec carries."""
    merged = {k: v for k, v in section_defaults("importance.ompq", section).items() if k in POLICY_KEYS}
    merged.update({k: policy_cfg[k] for k in POLICY_KEYS if k in policy_cfg})
    bits = merged.get("bits") or REFERENCE_BITS[merged["mode"]]
    if len(bits) != 2:
        raise InputError(f"ompq bits must be [lo, hi], got {bits!r}")
    merged["bits"] = [int(bits[0]), int(bits[1])]
    return merged


def search_ompq(policy_cfg: dict, cost, candidates=None, *, importance_path=None, settings: dict | None = None,
                **_) -> tuple[list[int], list[int], dict]:
    """(w_bits, a_bits, meta); meta['fixed_bits'] holds the stem/classifier bits to record."""
    from .lp import ompq_policy
    from .orthogonality import read_ompq_importance

    if importance_path is None:
        raise InputError("search 'ompq' needs the OMPQ importance file; set the policy's importance: ompq")
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
