"""An accuracy target on the RFQuant supernet (`budget: {accuracy_drop: X}`): the fewest BitOps whose
top-1 stays within X points of the FP32 model, the budget AIMET's mixed precision leads with.

The greedy search walks one path from uniform `start_bits` down to every layer at `min_bits`
(`path_points` BitOps limits, geometric, searched largest first with the bits carried along, as
the reference searches several limits). Accuracy falls along it, so a bisection over the path finds
the last point within the target in about log2(path_points) evaluations. Each evaluation re-estimates
the subnet's BN and measures top-1 on a validation split carved from the training data: the
supernet's holdout where it kept one, else `validation_fraction` of the training images (which the
supernet and the FP32 model then trained on); never the test split. The FP32 reference is measured
on the same split. The policy records every evaluation.
"""
from __future__ import annotations

import logging
import time

from ..cost import CostModel
from ..errors import InputError

log = logging.getLogger("mpq")


def path_limits(cost: CostModel, w_lists, a_lists, start_bits: int, min_bits: int, points: int) -> list[int]:
    """`points` BitOps limits, geometric, from uniform start_bits down to every layer at its floor."""
    from .greedy_search import move_floor

    def floor(cands):
        return min(b for b in cands if b >= move_floor(cands, min_bits))

    top = cost.uniform_bitops(start_bits, start_bits)
    bottom = cost.bitops([floor(c) for c in w_lists], [floor(c) for c in a_lists])
    if bottom >= top:
        return [top]
    ratio = (bottom / top) ** (1 / (points - 1))
    limits = [int(top * ratio ** k) for k in range(points - 1)] + [bottom]
    return sorted(set(limits), reverse=True)


def last_within(ok, n: int) -> tuple[int | None, list[int]]:
    """Bisection for the last index i with ok(i) on a path where ok holds up to a point; returns
    (that index or None when ok(0) fails, the indices evaluated in order)."""
    tried = []

    def check(i):
        tried.append(i)
        return ok(i)

    if not check(0):
        return None, tried
    if n == 1 or check(n - 1):
        return n - 1, tried
    lo, hi = 0, n - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if check(mid) else (lo, mid)
    return lo, tried


def accuracy_target_policy(policy_cfg: dict, cost: CostModel, supernet_path, fp32_path, data, settings: dict,
                           seed: int, device) -> tuple[list[int], list[int], dict]:
    """(w_bits, a_bits, metadata) of the fewest BitOps on the greedy path within the target."""
    from ..build import fp32_model
    from ..data import make_loader, split_holdout
    from ..train.loop import evaluate
    from .greedy_search import greedy_limits, greedy_settings
    from .supernet import load_supernet, subnet_accuracy

    if fp32_path is None:
        raise InputError("budget accuracy_drop needs the FP32 model to measure the drop against (--fp32)")
    if "accuracy" not in (settings or {}):
        raise InputError("budget accuracy_drop: the search spec has no `search.accuracy` settings; "
                         "pass them as the workflow does (mpq.search.settings.greedy_settings_of)")
    t0 = time.perf_counter()
    drop, target_cfg, cfg = float(policy_cfg["budget"]["accuracy_drop"]), settings["accuracy"], greedy_settings(settings)
    loaded = load_supernet(supernet_path)
    supernet, state, ckpt = loaded
    limits = path_limits(cost, state.w, state.a, int(cfg["start_bits"]), int(cfg["min_bits"]),
                         int(target_cfg["path_points"]))
    path = greedy_limits(limits, cost, loaded, supernet_path, data, settings, seed, device)
    holdout = ckpt["holdout"]
    if holdout["fraction"] > 0:
        calib, val = split_holdout(data.train, holdout["fraction"], holdout["seed"])
        split = f"the supernet's holdout: {len(val)} training images"
    else:
        calib, val = split_holdout(data.train, float(target_cfg["validation_fraction"]), seed)
        split = (f"{len(val)} training images ({target_cfg['validation_fraction']:g} of them; the supernet kept "
                 "no holdout, so it trained on these too)")
    batch = int(cfg["batch_size"])
    fp32 = fp32_model(fp32_path, supernet.arch, ckpt["num_classes"])[0].to(device)
    fp32_top1 = evaluate(fp32, make_loader(val, batch, train=False), device)["top1"]
    evaluations = []

    def within(i):
        w, a, meta = path[i]
        top1 = subnet_accuracy(supernet, w, a, calib, val, device, images=int(target_cfg["bn_calibration_images"]),
                               batch_size=batch, seed=seed + 1)["top1"]
        bitops_g = cost.bitops(w, a) / 1e9
        evaluations.append({"path_index": i, "bitops_g": round(bitops_g, 6),
                            "val_top1": round(top1, 4), "drop": round(fp32_top1 - top1, 4),
                            "within": bool(fp32_top1 - top1 <= drop)})
        log.info("accuracy target: path point %d/%d, %.6g GBitOps: top-1 %.2f (FP32 %.2f, drop %.2f, target %.2f)",
                 i + 1, len(path), bitops_g, top1, fp32_top1, fp32_top1 - top1, drop)
        return evaluations[-1]["within"]

    chosen, _ = last_within(within, len(path))
    if chosen is None:
        first = evaluations[0]
        raise InputError(f"budget accuracy_drop={drop:g}: even the largest budget on the greedy path "
                         f"({first['bitops_g']:g} GBitOps, uniform W{cfg['start_bits']}A{cfg['start_bits']}) drops "
                         f"{first['drop']:.2f} points on the validation split; raise accuracy_drop or "
                         "search.greedy.start_bits")
    w, a, meta = path[chosen]
    meta = {**{k: v for k, v in meta.items() if k not in ("front", "moves", "steps", "held_steps", "seconds")},
            "accuracy_target": {"drop": drop, "fp32_val_top1": round(fp32_top1, 4), "validation": split,
                                "path": [round(limit / 1e9, 6) for limit in limits], "chosen": chosen,
                                "evaluations": evaluations},
            "seconds": round(time.perf_counter() - t0, 6)}
    return w, a, meta
