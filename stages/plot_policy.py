"""Stage: per-layer weight and activation bits of one policy as a bar chart (.png and .svg)."""
import argparse
from pathlib import Path

from mpq.figures import plot_policy_bits
from mpq.policy import Policy
from mpq.runtime import run_stage


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--policy", required=True, help="policy.yaml")
    ap.add_argument("--out-stem", required=True, help="output path without extension")
    args = ap.parse_args()
    policy = Policy.load(args.policy)
    achieved = policy.meta.get("name", Path(args.policy).parent.name)
    plot_policy_bits(policy.names, policy.w_bits, policy.a_bits, Path(args.out_stem),
                     f"{achieved}: bits per layer ({policy.arch})", fixed_bits=policy.fixed_bits)


if __name__ == "__main__":
    run_stage(main)
