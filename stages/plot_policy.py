"""Stage: per-layer weight and activation bits of one policy as a bar chart (.png and .svg)."""
import argparse

from mpq.figures import plot_policy_bits
from mpq.policy import Policy
from mpq.runtime import run_stage


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--policy", required=True, help="policy.yaml")
    ap.add_argument("--png", required=True, help="the chart as PNG")
    ap.add_argument("--svg", required=True, help="the chart as SVG")
    args = ap.parse_args()
    policy = Policy.load(args.policy)
    achieved = policy.meta["name"]
    plot_policy_bits(policy.names, policy.w_bits, policy.a_bits, [args.png, args.svg],
                     f"{achieved}: bits per layer ({policy.arch})", fixed_bits=policy.fixed_bits)


if __name__ == "__main__":
    run_stage(main)
