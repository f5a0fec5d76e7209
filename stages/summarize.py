"""Stage: collect FP32 and per-policy metrics into summary.csv and draw the accuracy-cost fronts."""
import argparse
import logging

from mpq.figures import plot_front
from mpq.io import atomic_write_text
from mpq.report import below_start_policies, load_metrics, read_benchmarks, summary_table
from mpq.runtime import run_stage

log = logging.getLogger("mpq")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--fp32-metrics", required=True)
    ap.add_argument("--metrics", nargs="*", default=[], help="metrics.json of every policy")
    ap.add_argument("--benchmarks", nargs="*", default=[], help="Snakemake benchmark files (stage wall times)")
    ap.add_argument("--experiment", default="")
    ap.add_argument("--out", required=True, help="summary.csv")
    ap.add_argument("--bitops-figure", nargs="+", required=True, help="top-1 against BitOps (.png, .svg)")
    ap.add_argument("--size-figure", nargs="+", required=True, help="top-1 against weight size (.png, .svg)")
    args = ap.parse_args()
    (fp32,) = load_metrics([args.fp32_metrics])
    table = summary_table(fp32, load_metrics(args.metrics), read_benchmarks(args.benchmarks))
    plot_front(table, "bitops_g", "BitOps (G)", args.bitops_figure, f"{args.experiment}: top-1 vs BitOps")
    plot_front(table, "size_mb", "weight size (MiB)", args.size_figure, f"{args.experiment}: top-1 vs size")
    atomic_write_text(args.out, table.to_csv(index=False))
    print(table.to_string(index=False))
    below = below_start_policies(table)
    if below:
        log.warning("finetune ended below its start (column below_start): %s", ", ".join(below))


if __name__ == "__main__":
    run_stage(main)
