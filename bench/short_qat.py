"""Short QAT from a converged FP32 model: which recipe keys keep (or lose) the calibrated start.

Issue 14, section 3: one LSQ epoch at W4A4 ended below its own start (MSE range init + BN
re-estimation). This runs the library's own finetune (mpq.train.qat.finetune, the code path of the
finetune stage) from one FP32 checkpoint and one policy, for named recipe variants that each change
one thing (lr schedule granularity, label smoothing, warm-up, lr, distillation), and prints start
and final test top-1 side by side. Variants can run as separate processes (one thread each) that
append to one JSON-lines file; --table prints the table from that file.

    # after the fidelity workflow's pretrain and uniform searches exist:
    python bench/short_qat.py --policy uniform-w4a4 --variants per-epoch,per-iteration --out /tmp/sq.jsonl
    python bench/short_qat.py --table /tmp/sq.jsonl
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mpq.build import quantize_for_policy  # noqa: E402
from mpq.config import validate_config  # noqa: E402
from mpq.data import make_loader  # noqa: E402
from mpq.runtime import seed_everything, setup_logging  # noqa: E402
from mpq.stage_common import fp32_model_of, load_data, load_policy_for, loader_args  # noqa: E402
from mpq.train.kd import KdOptions  # noqa: E402
from mpq.train.loop import evaluate  # noqa: E402
from mpq.train.qat import finetune  # noqa: E402

# Each variant: overrides on the config's recipe. "per-epoch" is the recipe as the fidelity config
# wrote it before issue 14 (one epoch = the base lr throughout); the others change one key at a time.
VARIANTS = {
    "per-epoch": {"schedule_per": "epoch", "label_smoothing": 0.1},
    "per-epoch-ls0": {"schedule_per": "epoch", "label_smoothing": 0.0},
    "per-iteration": {"schedule_per": "iteration", "label_smoothing": 0.1},
    "per-iteration-ls0": {"schedule_per": "iteration", "label_smoothing": 0.0},
    "per-iteration-ls0-warmup": {"schedule_per": "iteration", "label_smoothing": 0.0, "warmup_epochs": 0.1},
    "per-iteration-ls0-lr0.004": {"schedule_per": "iteration", "label_smoothing": 0.0, "lr": 0.004},
    "per-iteration-ls0-lr0.02": {"schedule_per": "iteration", "label_smoothing": 0.0, "lr": 0.02},
    "per-iteration-ls0-kd": {"schedule_per": "iteration", "label_smoothing": 0.0,
                             "kd": {"enabled": True, "temperature": 2.0, "weight": 0.5}},
    # Longer schedules with the new defaults (C1 and C2 against the schedule): 3 epochs of the same
    # 60 % share, or 3 epochs of the whole split.
    "per-iteration-ls0-3-epochs": {"schedule_per": "iteration", "label_smoothing": 0.0, "epochs": 3},
    "per-iteration-ls0-3-epochs-full": {"schedule_per": "iteration", "label_smoothing": 0.0, "epochs": 3,
                                        "data_fraction": 1.0},
    "per-iteration-ls0-kd-3-epochs-full": {"schedule_per": "iteration", "label_smoothing": 0.0, "epochs": 3,
                                           "data_fraction": 1.0,
                                           "kd": {"enabled": True, "temperature": 2.0, "weight": 0.5}},
    "per-epoch-lsq-init": {"schedule_per": "epoch", "label_smoothing": 0.1, "range_init": "lsq"},
    "per-iteration-ls0-lsq-init": {"schedule_per": "iteration", "label_smoothing": 0.0, "range_init": "lsq"},
}


def run(cfg: dict, policy_name: str, recipe_name: str, variant: str) -> dict:
    res = REPO / "results" / cfg["experiment"]
    spec = {"seed": cfg["seed"], "device": cfg["device"], "dataset": cfg["dataset"], "model": cfg["model"],
            "quant": cfg["quant"]}
    recipe = {**cfg["finetune"][recipe_name], **VARIANTS[variant]}
    seed_everything(int(cfg["seed"]))
    fp32 = res / "pretrain" / "model.pt"
    model = fp32_model_of(spec, fp32)
    policy = load_policy_for(res / "policies" / policy_name / "policy.yaml", spec)
    data = load_data(spec)
    teacher = fp32_model_of(spec, fp32) if KdOptions.from_recipe(recipe).enabled else None
    quantize_for_policy(model, policy, spec["quant"], recipe)
    args = loader_args(spec)
    t0 = time.perf_counter()
    fit = finetune(model, data, recipe, torch.device("cpu"), teacher=teacher, **args)
    test = evaluate(model, make_loader(data.test, args["batch_size"], train=False, workers=args["workers"]),
                    "cpu")
    return {"policy": policy_name, "variant": variant, "recipe": {k: recipe[k] for k in sorted(VARIANTS[variant])},
            "start_top1": fit.get("start_top1"), "top1": test["top1"], "seconds": round(time.perf_counter() - t0)}


def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out = ["| policy | variant | start top-1 | final top-1 | final - start | s |", "|---|---|---|---|---|---|"]
    for r in rows:
        start = r["start_top1"]
        delta = f"{r['top1'] - start:+.2f}" if start is not None else ""
        out.append(f"| {r['policy']} | {r['variant']} | {start:.2f} | {r['top1']:.2f} | {delta} | {r['seconds']} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "config" / "fidelity-cifar10.yaml"))
    ap.add_argument("--policy", default="uniform-w4a4", help="a policy of the config (its policy.yaml must exist)")
    ap.add_argument("--recipe", default="lsq", help="the config's recipe the variants modify")
    ap.add_argument("--variants", default="per-epoch,per-iteration", help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="append one JSON line per run here")
    ap.add_argument("--table", help="print the table of a JSON-lines file and exit")
    args = ap.parse_args()
    if args.table:
        print(table(Path(args.table)))
        return
    setup_logging()
    torch.set_num_threads(args.threads)
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    cfg = validate_config(yaml.safe_load(Path(args.config).read_text()), schema)
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            sys.exit(f"variant {variant!r} is unknown; use {', '.join(VARIANTS)}")
        row = run(cfg, args.policy, args.recipe, variant)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
