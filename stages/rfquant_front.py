"""Stage: a retraining-free RFQuant front in one job: every point's greedy search, BN re-estimation
and test evaluation on one loaded supernet. Writes, per point, the files its search, subnet and
evaluate jobs would (the lists below follow the spec's `points` order)."""
from pathlib import Path

from mpq.errors import InputError
from mpq.rfquant.front import PointFiles, run_front
from mpq.runtime import begin_stage, run_stage, stage_parser

FILES = ("policies", "models", "charts", "metrics", "search_times", "model_times", "evaluate_times")


def main():
    ap = stage_parser(__doc__, "seed, device, dataset, model, image_size, quant, search, recipe, points")
    ap.add_argument("--supernet", required=True, help="supernet.pt from train_supernet")
    for name in FILES:
        per_point = "two per point (.png, .svg)" if name == "charts" else "one per point"
        ap.add_argument(f"--{name.replace('_', '-')}", nargs="+", required=True, help=f"{per_point}: {name}")
    args = ap.parse_args()
    spec = begin_stage(args)
    names = list(spec["points"])
    lists = [[Path(p) for p in getattr(args, name)] for name in FILES]   # PointFiles' field order
    charts = lists[FILES.index("charts")]
    lists[FILES.index("charts")] = list(zip(charts[::2], charts[1::2]))
    if any(len(paths) != len(names) for paths in lists) or len(charts) != 2 * len(names):
        raise InputError(f"--spec names {len(names)} points but the file lists have "
                         f"{', '.join(str(len(p)) for p in lists)} paths; give one of each per point")
    run_front(spec, args.supernet, {name: PointFiles(*(paths[i] for paths in lists)) for i, name in enumerate(names)})


if __name__ == "__main__":
    run_stage(main)
