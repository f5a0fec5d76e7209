"""The experiment summary: one row for FP32 and one per policy, with cost, accuracy and stage times."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

from .registry import IMPORTANCE_RULES

COLUMNS = ["policy", "front", "search", "importance", "finetune", "budget", "bitops_g", "size_mb", "compression_ratio",
           "avg_w_bits", "avg_a_bits", "top1", "start_top1", "below_start", "top5", "loss", "time_pretrain_s",
           "time_importance_s", "time_search_s", "time_finetune_s", "time_evaluate_s"]


def _budget_text(budget) -> str:
    if not budget:
        return ""
    return ";".join(f"{k}={_value_text(v)}" for k, v in budget.items() if v is not None)


def _value_text(value) -> str:
    """A budget value as the summary shows it; a sweep's point between two uniform BitOps is
    `w2a3..w6a6@0.25` (a quarter of the way)."""
    if isinstance(value, dict) and "between" in value:
        return f"{value['between'][0]}..{value['between'][1]}@{value['at']:g}"
    return str(value)


def start_comparison(finetune_metrics: dict, top1: float) -> dict:
    """The finetune's start (test metrics after range init and BN re-estimation) beside the final
    top-1, and whether training ended below it; empty when the finetune did not train."""
    if finetune_metrics.get("start_top1") is None:
        return {}
    start = float(finetune_metrics["start_top1"])
    return {"start_top1": start, "start_top5": finetune_metrics.get("start_top5"),
            "below_start": bool(top1 < start)}


def policy_metrics(name: str, cfg: dict, result: dict, policy, cost, finetune_metrics: dict) -> dict:
    """metrics.json of one policy: its config, test metrics, cost and bits, and the finetune's start."""
    return {"policy": name, "front": cfg.get("front"), "search": cfg["search"], "importance": cfg.get("importance"),
            "finetune": cfg.get("finetune"), "budget": cfg.get("budget") or {"bits": cfg.get("bits")},
            **result, **policy.cost_summary(cost), "w_bits": policy.w_bits, "a_bits": policy.a_bits,
            **start_comparison(finetune_metrics or {}, result["top1"])}


def below_start_policies(table: pd.DataFrame) -> list[str]:
    """Names of the policies whose finetune ended below its start."""
    return [str(p) for p in table.loc[table["below_start"].eq(True), "policy"]]


def read_benchmarks(paths) -> dict:
    """{(rule, policy or None): seconds} from the stages' timing files (benchmark TSVs) laid out as
    benchmarks/<rule>.tsv or benchmarks/<rule>/<policy>.tsv."""
    times = {}
    for p in map(Path, paths):
        with open(p) as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        key = (p.stem, None) if p.parent.name == "benchmarks" else (p.parent.name, p.stem)
        times[key] = round(float(row["s"]), 2)
    return times


def summary_table(fp32: dict, policies: list[dict], times: dict | None = None) -> pd.DataFrame:
    times = times or {}
    rows = [{"policy": "fp32", "front": "", "search": "", "importance": "", "finetune": "", "budget": "",
             "bitops_g": fp32["bitops_g"], "size_mb": fp32["size_mb"], "compression_ratio": 1.0,
             "avg_w_bits": 32.0, "avg_a_bits": 32.0, "top1": fp32["top1"], "top5": fp32["top5"],
             "loss": fp32["loss"], "time_pretrain_s": times.get(("pretrain", None))}]
    for m in policies:
        row = {k: m.get(k) for k in COLUMNS}
        row["budget"] = _budget_text(m.get("budget"))
        row["importance"] = m.get("importance") or ""
        row["front"] = m.get("front") or ""
        name = m["policy"]
        rules = IMPORTANCE_RULES.get(row["importance"], ())
        if rules and all((r, None) in times for r in rules):
            row["time_importance_s"] = round(sum(times[(r, None)] for r in rules), 2)
        for stage in ("search", "finetune", "evaluate"):
            row[f"time_{stage}_s"] = times.get((stage, name))
        rows.append(row)
    import pandas as pd   # here: a second of start-up the evaluate jobs do not need

    df = pd.DataFrame(rows, columns=COLUMNS)
    for col in ("bitops_g", "size_mb"):
        df[col] = df[col].astype(float).round(6)
    for col in ("top1", "start_top1", "top5", "loss", "compression_ratio", "avg_w_bits", "avg_a_bits"):
        df[col] = df[col].astype(float).round(4)
    return df


def load_metrics(paths) -> list[dict]:
    out = []
    for p in paths:
        with open(p) as f:
            out.append(json.load(f))
    return out
