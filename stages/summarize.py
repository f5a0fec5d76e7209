"""Stage: collect FP32 and per-policy metrics into summary.csv."""
import argparse

from mpq.io import atomic_write_text
from mpq.report import load_metrics, summary_table
from mpq.runtime import run_stage


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--fp32-metrics", required=True)
    ap.add_argument("--metrics", nargs="*", default=[], help="metrics.json of every policy")
    ap.add_argument("--out", required=True, help="summary.csv")
    args = ap.parse_args()
    (fp32,) = load_metrics([args.fp32_metrics])
    table = summary_table(fp32, load_metrics(args.metrics))
    atomic_write_text(args.out, table.to_csv(index=False))
    print(table.to_string(index=False))


if __name__ == "__main__":
    run_stage(main)
