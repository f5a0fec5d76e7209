"""A retraining-free RFQuant front in one process: one loaded supernet, every point's greedy search
(in one multi-limit pass, as the reference searches several limits), BN re-estimation and test
evaluation. Each point gets the files its three per-point jobs (search, subnet, evaluate) would
write, so the summary, the figures and `mpq` tools read them alike."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("mpq")


@dataclass(frozen=True)
class PointFiles:
    policy: Path           # policy.yaml (and policy.timing.json beside it)
    model: Path            # model.pt
    charts: tuple          # bits.png, bits.svg
    metrics: Path          # metrics.json
    search_time: Path      # benchmark TSVs, as the search / subnet / evaluate rules write them
    model_time: Path
    evaluate_time: Path


def point_spec(spec: dict, name: str) -> dict:
    """The spec a point's own search, subnet and evaluate jobs would get (the front's sections)."""
    return {**{k: v for k, v in spec.items() if k != "points"}, "policy_name": name, "policy": spec["points"][name]}


def run_front(spec: dict, supernet_path, files: dict[str, PointFiles]) -> None:
    """Search, recalibrate and evaluate every point of `spec["points"]`, writing `files[name]`."""
    from .. import models
    from ..build import fixed_bits_of
    from ..cost import CostModel
    from ..data import make_loader
    from ..figures import plot_policy_chart
    from ..io import write_benchmark, write_timing, atomic_write_json
    from ..report import policy_metrics
    from ..runtime import resolve_device
    from ..search.policy_search import searched_policy
    from ..stage_common import check_supernet_model, load_data
    from ..train import evaluate
    from .greedy_search import greedy_front
    from .subnet import save_recalibrated_subnet
    from .supernet import load_supernet

    names = list(spec["points"])
    arch, num_classes = spec["model"]["arch"], spec["model"]["num_classes"]
    cost = CostModel.from_model(models.create(arch, num_classes=num_classes), spec["image_size"],
                                fixed_bits=fixed_bits_of(spec["quant"]))
    loaded = load_supernet(supernet_path)
    check_supernet_model(loaded[2], spec, supernet_path)
    data, device = load_data(spec), resolve_device(spec["device"])
    searched = greedy_front([spec["points"][n] for n in names], cost, loaded, supernet_path, data,
                            spec["search"], int(spec["seed"]), device)
    test = make_loader(data.test, spec["dataset"]["batch_size"], train=False, workers=spec["dataset"]["workers"])
    started = time.perf_counter()
    for k, (name, (w, a, meta)) in enumerate(zip(names, searched)):
        out, own = files[name], point_spec(spec, name)
        policy, point_cost, seconds = searched_policy(own, cost, w, a, meta)
        policy.save(out.policy, point_cost)
        plot_policy_chart(policy, out.charts)
        write_timing(out.policy, search=seconds)
        write_benchmark(out.search_time, seconds)
        t0 = time.perf_counter()
        model = save_recalibrated_subnet(out.model, loaded[0], policy, own, data, device, supernet_path)
        write_benchmark(out.model_time, time.perf_counter() - t0)
        t0 = time.perf_counter()
        result = evaluate(model, test, device)
        metrics = policy_metrics(name, own["policy"], result, policy, point_cost, {"epochs": 0})
        atomic_write_json(out.metrics, metrics)
        evaluate_seconds = time.perf_counter() - t0
        write_timing(out.metrics, evaluate=evaluate_seconds)
        write_benchmark(out.evaluate_time, evaluate_seconds)
        done = time.perf_counter() - started
        log.info("front point %d/%d %s: %.6g GBitOps, top-1 %.2f (%.1f s so far, ETA %.0f s)", k + 1, len(names),
                 name, metrics["bitops_g"], result["top1"], done, done / (k + 1) * (len(names) - k - 1))
