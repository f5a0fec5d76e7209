"""Cost of one RFQuant supernet step relative to one FP32 training step (docs/methods/rfquant.md).

A supernet step runs 1 + N forward/backward passes (max subnet + N random subnets), so N + 1 times
an FP32 step is intrinsic. What is beyond that comes from fake quantization in every pass, IDM
(hooks and copies of every BN output), the QE/ARWD terms, two optimizers and the EMA update over
all BN copies. All variants are timed in one run, interleaved, on the same synthetic batch.

    python bench/supernet_step.py                        # resnet20, 32 px, batch 128, CPU
    python bench/supernet_step.py --repeats 3 --threads 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mpq import models  # noqa: E402
from mpq.data.seeding import sampler_for_step  # noqa: E402
from mpq.quant import set_uniform_bits  # noqa: E402
from mpq.rfquant.ema import EmaModel  # noqa: E402
from mpq.rfquant.losses import IdmTap  # noqa: E402
from mpq.rfquant.supernet import build_supernet, init_supernet_act_steps  # noqa: E402
from mpq.rfquant.training import (SupernetUpdate, rfquant_config, supernet_optimizers,  # noqa: E402
                                  supernet_step)

CANDIDATES = [6, 5, 4, 3, 2]


def fp32_variant(arch, classes, x, y):
    model = models.create(arch, num_classes=classes).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def supernet_variant(arch, classes, size, x, y, cfg, *, single_pass=False):
    """The full RFQuant step (or, with single_pass, one W6A6 pass) plus both optimizers and EMA."""
    model = models.create(arch, num_classes=classes)
    state = build_supernet(model, image_size=size, candidates=CANDIDATES, grad_scale=False)
    init_supernet_act_steps(model, state, x)
    model.train()
    sgd, adam = supernet_optimizers(model, cfg)
    update = SupernetUpdate(sgd, adam, EmaModel(model, cfg["ema_decay"]), model)
    tap = IdmTap(model) if cfg["idm"] and not single_pass else None
    counter = [0]

    def step():
        update.zero_grad()
        if single_pass:
            set_uniform_bits(model, 6)
            F.cross_entropy(model(x), y).backward()
        else:
            supernet_step(model, x, y, state, sampler_for_step(0, counter[0]), cfg, tap=tap, qe_lambda=0.05)
        counter[0] += 1
        update.step()
    return step


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--paths", type=int, default=3, help="random subnets per step (N)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    classes = 10
    x = torch.randn(args.batch, 3, args.image_size, args.image_size)
    y = torch.randint(0, classes, (args.batch,))
    cfg = rfquant_config({"random_paths": args.paths})
    variants = {
        "fp32 step": fp32_variant(args.arch, classes, x, y),
        "one W6A6 pass + 2 optimizers + EMA": supernet_variant(args.arch, classes, args.image_size, x, y, cfg,
                                                                single_pass=True),
        f"supernet step (1+{args.paths}), IDM off": supernet_variant(args.arch, classes, args.image_size, x, y,
                                                                    {**cfg, "idm": False}),
        f"supernet step (1+{args.paths}), IDM on": supernet_variant(args.arch, classes, args.image_size, x, y, cfg),
    }
    times = {name: [] for name in variants}
    for step in variants.values():   # warm-up (allocator, lazy init)
        step()
    for _ in range(args.repeats):   # interleaved, so load from other processes hits all alike
        for name, step in variants.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["fp32 step"])
    passes = 1 + args.paths
    print(f"{args.arch}, {args.image_size} px, batch {args.batch}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} (device cpu)")
    print(f"{'variant':<40} {'ms/step':>9} {'x fp32':>8} {'x fp32 / passes':>16}")
    for name, ts in times.items():
        t = statistics.median(ts)
        n = passes if name.startswith("supernet") else 1
        print(f"{name:<40} {1000 * t:9.1f} {t / base:8.2f} {t / base / n:16.2f}")
    print(f"intrinsic: {passes} passes; the last column is the overhead factor per pass beyond that")


if __name__ == "__main__":
    main()
