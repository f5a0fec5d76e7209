"""What several subcommands share: cost models for policies, bit options, table printing."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import models
from ..cost import CostModel
from ..io import atomic_write_text
from ..policy import Policy
from ..errors import InputError


def cost_model(arch: str, num_classes: int, image_size: int, fixed_bits) -> CostModel:
    """Cost of the float model's shapes (no weights needed), as the search stage builds it."""
    return CostModel.from_model(models.create(arch, num_classes=num_classes), image_size, fixed_bits=fixed_bits)


def policy_cost(policy: Policy, source: str = "policy") -> CostModel:
    cost = cost_model(policy.arch, policy.num_classes, policy.image_size, policy.fixed_bits)
    policy.check_model(cost.names, source=source)
    return cost


def fixed_bits_arg(values) -> tuple:
    """--fixed-bits W A (stem and classifier alike) or SW SA CW CA."""
    values = [int(v) for v in values]
    if len(values) == 2:
        return (tuple(values), tuple(values))
    if len(values) == 4:
        return (tuple(values[:2]), tuple(values[2:]))
    raise InputError(f"--fixed-bits takes 2 values (W A for stem and classifier) or 4 (stem W A, "
                     f"classifier W A), got {len(values)}")


def pixels(text: str) -> int:
    """--image-size: a positive integer (0 otherwise fails deep inside torch's shape trace)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not an image size; give the input height = width in "
                                         f"pixels, e.g. 32")
    return value


def add_model_args(ap, required: bool = False) -> None:
    ap.add_argument("--arch", required=required, help=f"model name ({', '.join(models.list_models())})")
    ap.add_argument("--num-classes", type=int, required=required, help="classifier outputs")
    ap.add_argument("--image-size", type=pixels, required=required, help="input height = width in pixels")
    ap.add_argument("--fixed-bits", nargs="+", default=["8", "8"], metavar="BITS",
                    help="bits of the fixed layers: W A for both stem and classifier, or "
                         "stem-W stem-A classifier-W classifier-A (default: 8 8)")


def need_model_args(args, what: str) -> None:
    missing = [f"--{k.replace('_', '-')}" for k in ("arch", "num_classes", "image_size")
               if getattr(args, k) is None]
    if missing:
        raise InputError(f"{what} needs {', '.join(missing)} (the lists do not say which model they are for)")


def totals(policy: Policy, cost: CostModel) -> dict:
    """BitOps (G), size (MiB), compression ratio and mean bits: the policy.yaml 'achieved' block."""
    return policy.cost_summary(cost)


def format_table(headers: list[str], rows: list[list], right: set[int] | None = None) -> str:
    """A plain fixed-width text table; columns in `right` are right-aligned (numbers)."""
    right = right if right is not None else set(range(1, len(headers)))
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def fmt(row):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))

    lines = [fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells[1:]]
    return "\n".join(line.rstrip() for line in lines)


def format_totals(summary: dict) -> str:
    return (f"BitOps {summary['bitops_g']:.4f} G (FP32 {summary['fp32_bitops_g']:.2f} G)  "
            f"size {summary['size_mb']:.4f} MiB (FP32 {summary['fp32_size_mb']:.4f} MiB)  "
            f"compression {summary['compression_ratio']:.2f}x  "
            f"avg bits W {summary['avg_w_bits']:.2f} A {summary['avg_a_bits']:.2f}")


def emit(text: str, out: str | None = None) -> None:
    """Print to stdout, or write the file atomically when --out is given."""
    if out:
        atomic_write_text(Path(out), text if text.endswith("\n") else text + "\n")
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


def emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
