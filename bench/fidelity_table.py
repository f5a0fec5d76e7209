"""The fidelity experiment's table (bench/RESULTS.md) from a results folder, and the claims C1-C5.

Reads every `policies/<name>/metrics.json` (missing ones are listed as not finished) and the
Snakemake `benchmarks/` wall times, so a table can be printed while the workflow still runs.

    python bench/fidelity_table.py results/fidelity-cifar10-resnet20
    python bench/fidelity_table.py results/fidelity-cifar10-resnet20-seed1 --config config/fidelity-cifar10.yaml
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def wall_seconds(res: Path, rule: str, name: str | None = None) -> str:
    tsv = res / "benchmarks" / rule / f"{name}.tsv" if name else res / "benchmarks" / f"{rule}.tsv"
    if not tsv.exists():
        return ""
    with tsv.open() as f:
        return f"{float(next(csv.DictReader(f, delimiter=chr(9)))['s']):.0f}"


def rows(res: Path, policies: dict) -> tuple[float, list[dict]]:
    fp32 = json.loads((res / "pretrain" / "metrics.json").read_text())
    out = []
    for name, pol in policies.items():
        path = res / "policies" / name / "metrics.json"
        m = json.loads(path.read_text()) if path.exists() else None
        out.append({"name": name, "search": pol["search"] + (f"/{pol['importance']}" if pol.get("importance") else ""),
                    "finetune": pol["finetune"], "m": m, "search_s": wall_seconds(res, "search", name),
                    "train_s": wall_seconds(res, "finetune", name), "eval_s": wall_seconds(res, "evaluate", name)})
    return fp32, out


def table(res: Path, policies: dict) -> str:
    fp32_metrics, found = rows(res, policies)
    fp32 = fp32_metrics["top1"]
    lines = ["| policy | search | finetune | BitOps (G) | size (MiB) | avg w/a bits | start top-1 | top-1 | "
             "Δ FP32 | search s | finetune/ptq/subnet s | eval s |", "|" + "---|" * 12,
             f"| fp32 | | | {fp32_metrics['bitops_g']:.4f} | {fp32_metrics['size_mb']:.4f} | 32/32 | | {fp32:.2f} | | | pretrain {wall_seconds(res, 'pretrain')} | |"]
    for r in found:
        m = r["m"]
        if m is None:
            lines.append(f"| {r['name']} | {r['search']} | {r['finetune']} | not finished | | | | | | "
                         f"{r['search_s']} | {r['train_s']} | |")
            continue
        start = f"{m['start_top1']:.2f}" if m.get("start_top1") is not None else "—"
        lines.append(f"| {r['name']} | {r['search']} | {r['finetune']} | {m['bitops_g']:.4f} | {m['size_mb']:.4f} | "
                     f"{m['avg_w_bits']:.2f}/{m['avg_a_bits']:.2f} | {start} | {m['top1']:.2f} | "
                     f"{m['top1'] - fp32:+.2f} | {r['search_s']} | {r['train_s']} | {r['eval_s']} |")
    return "\n".join(lines)


def claims(res: Path, policies: dict) -> str:
    fp32_metrics, found = rows(res, policies)
    fp32 = fp32_metrics["top1"]
    top = {r["name"]: r["m"]["top1"] for r in found if r["m"] is not None}

    def delta(a: str, b: str | None) -> str:
        if a not in top or (b is not None and b not in top):
            return "not measured"
        ref = fp32 if b is None else top[b]
        return f"{top[a]:.2f} vs {ref:.2f}: {top[a] - ref:+.2f}"

    return "\n".join([
        f"- C1 limpq-w3a3 vs uniform-w3a3: {delta('limpq-w3a3', 'uniform-w3a3')}",
        f"- C2 uniform-w4a4 vs FP32: {delta('uniform-w4a4', None)}; uniform-w3a3 vs FP32: {delta('uniform-w3a3', None)}",
        f"- C3 rfquant-w4a4 vs uniform-w4a4: {delta('rfquant-w4a4', 'uniform-w4a4')}; "
        f"rfquant-w3a3 vs uniform-w3a3: {delta('rfquant-w3a3', 'uniform-w3a3')}",
        f"- C4 ompq-ptq vs uniform-w3a8-ptq: {delta('ompq-ptq', 'uniform-w3a8-ptq')}; "
        f"ompq-ptq-beta100: {delta('ompq-ptq-beta100', 'uniform-w3a8-ptq')}",
        f"- C5 w2a2 dampen / freeze / n2uq / kd vs lsq: {delta('w2a2-dampen', 'w2a2-lsq')}; "
        f"{delta('w2a2-freeze', 'w2a2-lsq')}; {delta('w2a2-n2uq', 'w2a2-lsq')}; {delta('w2a2-kd', 'w2a2-lsq')}",
        f"- section 3: uniform-w4a4 vs uniform-w4a4-ptq: {delta('uniform-w4a4', 'uniform-w4a4-ptq')}",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="results/<experiment>")
    ap.add_argument("--config", default=str(REPO / "config" / "fidelity-cifar10.yaml"))
    args = ap.parse_args()
    policies = yaml.safe_load(Path(args.config).read_text())["policies"]
    res = Path(args.results)
    print(table(res, policies))
    print()
    print(claims(res, policies))


if __name__ == "__main__":
    main()
