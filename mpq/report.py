"""The experiment summary: one row for FP32 and one per policy."""
from __future__ import annotations

import json

import pandas as pd

COLUMNS = ["policy", "search", "importance", "finetune", "budget", "bitops_g", "size_mb", "compression_ratio",
           "avg_w_bits", "avg_a_bits", "top1", "top5", "loss"]


def _budget_text(budget) -> str:
    if not budget:
        return ""
    return ";".join(f"{k}={v}" for k, v in budget.items() if v is not None)


def summary_table(fp32: dict, policies: list[dict]) -> pd.DataFrame:
    rows = [{"policy": "fp32", "search": "", "importance": "", "finetune": "", "budget": "",
             "bitops_g": fp32["bitops_g"], "size_mb": fp32["size_mb"], "compression_ratio": 1.0,
             "avg_w_bits": 32.0, "avg_a_bits": 32.0, "top1": fp32["top1"], "top5": fp32["top5"],
             "loss": fp32["loss"]}]
    for m in policies:
        row = {k: m.get(k) for k in COLUMNS}
        row["budget"] = _budget_text(m.get("budget"))
        row["importance"] = m.get("importance") or ""
        rows.append(row)
    df = pd.DataFrame(rows, columns=COLUMNS)
    for col in ("bitops_g", "size_mb"):
        df[col] = df[col].astype(float).round(6)
    for col in ("top1", "top5", "loss", "compression_ratio", "avg_w_bits", "avg_a_bits"):
        df[col] = df[col].astype(float).round(4)
    return df


def load_metrics(paths) -> list[dict]:
    out = []
    for p in paths:
        with open(p) as f:
            out.append(json.load(f))
    return out
