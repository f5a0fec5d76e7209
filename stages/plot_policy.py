"""Stage: per-layer weight and activation bits of one policy as a bar chart (.png and .svg)."""
import argparse

from mpq.figures import plot_policy_chart
from mpq.policy import Policy
from mpq.runtime import run_stage


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--policy", required=True, help="policy.yaml")
    ap.add_argument("--png", required=True, help="the chart as PNG")
    ap.add_argument("--svg", required=True, help="the chart as SVG")
    args = ap.parse_args()
    plot_policy_chart(Policy.load(args.policy), [args.png, args.svg])


if __name__ == "__main__":
    run_stage(main)
