"""`mpq cost`: BitOps and size of bit-widths for a model, without weights or data.

Bits come from --policy FILE, from --uniform W A, or from --w ... --a ... (one value per searchable
layer, or a single value for all). The accounting is docs/methods/accounting.md (mpq.cost).
"""
from __future__ import annotations

from ..policy import Policy
from .common import (add_model_args, cost_model, emit, emit_json, fixed_bits_arg, format_totals, need_model_args,
                     policy_cost, totals)
from .show import format_show
from ..errors import InputError


def _expand(values, n: int, what: str) -> list[int]:
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise InputError(f"{what} has {len(values)} values but the model has {n} searchable layers "
                         f"(give one value per layer, or one for all)")
    return values


def policy_from_args(args) -> Policy:
    given = [bool(args.policy), args.uniform is not None, args.w is not None or args.a is not None]
    if sum(given) != 1:
        raise InputError("give exactly one of --policy FILE, --uniform W A, or --w ... --a ...")
    if args.policy:
        policy = Policy.load(args.policy)
        if args.arch or args.num_classes or args.image_size:
            raise InputError("--policy already names the model; drop --arch/--num-classes/--image-size")
        return policy
    need_model_args(args, "cost")
    fixed = fixed_bits_arg(args.fixed_bits)
    cost = cost_model(args.arch, args.num_classes, args.image_size, fixed)
    n = len(cost.names)
    if args.uniform is not None:
        w, a = [args.uniform[0]] * n, [args.uniform[1]] * n
    else:
        if args.w is None or args.a is None:
            raise InputError("--w and --a go together: give both lists")
        w, a = _expand(args.w, n, "--w"), _expand(args.a, n, "--a")
    return Policy(args.arch, args.num_classes, args.image_size, cost.names, w, a, fixed_bits=fixed)


def run(args) -> None:
    policy = policy_from_args(args)
    cost = policy_cost(policy, source=args.policy or "bits")
    summary = totals(policy, cost)
    if args.json:
        emit_json({"model": {"arch": policy.arch, "num_classes": policy.num_classes,
                             "image_size": policy.image_size}, **summary})
    elif args.layers:
        emit(format_show(policy, cost))
    else:
        emit(f"{policy.arch}, {policy.num_classes} classes, {policy.image_size}px: " + format_totals(summary))


def register(sub) -> None:
    ap = sub.add_parser("cost", help="BitOps and size of a policy or of given bits (nothing is run)",
                        description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default=None, help="policy.yaml (names the model itself)")
    ap.add_argument("--uniform", type=int, nargs=2, metavar=("W", "A"), default=None,
                    help="every searchable layer at W-bit weights and A-bit activations")
    ap.add_argument("--w", type=int, nargs="+", default=None, help="weight bits per searchable layer")
    ap.add_argument("--a", type=int, nargs="+", default=None, help="activation bits per searchable layer")
    add_model_args(ap)
    ap.add_argument("--layers", action="store_true", help="also print the per-layer table")
    ap.add_argument("--json", action="store_true", help="print the totals as JSON")
    ap.set_defaults(run=run)
