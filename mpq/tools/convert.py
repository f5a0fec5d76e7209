"""`mpq convert`: policy.yaml <-> LIMPQ lists <-> RFQuant record, losslessly.

Forms (all in searchable-layer order, stem and classifier excluded):

- policy: the project's policy.yaml (mpq.policy);
- limpq:  the two top-level lists the LIMPQ reference finetunes from (docs/methods/limpq.md)
          weight_bits: [6, 3, 4, ...]
          act_bits: [6, 4, 6, ...]
          (`weight_bits = [...]` Python assignments are read too);
- rfquant: one record of the RFQuant greedy search, `[bops_g, [w bits], [a bits]]` (docs/methods/rfquant.md
          section 7), one per line when a file holds several (pick one with --record).

Lists do not say which model they belong to, so converting them to a policy needs --arch,
--num-classes and --image-size (and --fixed-bits, default 8 8).
"""
from __future__ import annotations

import ast
import re
from numbers import Real
from pathlib import Path

import yaml

from ..io import read_text_input, yaml_error_where
from ..policy import FORMAT, Policy, PolicyError
from .common import add_model_args, cost_model, emit, fixed_bits_arg, need_model_args, policy_cost
from ..errors import InputError, MissingInput

FORMS = ("policy", "limpq", "rfquant")


# ----------------------------------------------------------------------------------- writing

def _ints(bits) -> str:
    return "[" + ", ".join(str(int(b)) for b in bits) + "]"


def format_limpq(policy: Policy) -> str:
    lists = policy.to_limpq_lists()
    return f"weight_bits: {_ints(lists['weight_bits'])}\nact_bits: {_ints(lists['act_bits'])}\n"


def rfquant_bops(policy: Policy, cost=None) -> float:
    """The record's BitOps (G): the budget limit the policy was searched for, else its own cost."""
    budget = policy.meta.get("budget") or {}
    if isinstance(budget.get("bitops_g"), Real) and not isinstance(budget.get("bitops_g"), bool):
        return budget["bitops_g"]
    cost = cost or policy_cost(policy)
    return round(cost.bitops(policy.w_bits, policy.a_bits) / 1e9, 6)


def format_rfquant(policy: Policy, cost=None) -> str:
    return f"[{rfquant_bops(policy, cost)!r}, {_ints(policy.w_bits)}, {_ints(policy.a_bits)}]\n"


# ----------------------------------------------------------------------------------- reading

def _bit_list(value, what: str, source: str) -> list[int]:
    if not isinstance(value, (list, tuple)) or not value or not all(
            isinstance(b, int) and not isinstance(b, bool) for b in value):
        raise PolicyError(f"{source}: {what} must be a non-empty list of integer bit-widths, got {value!r}")
    return [int(b) for b in value]


def _record(value, source: str) -> tuple:
    if not (isinstance(value, (list, tuple)) and len(value) == 3 and isinstance(value[0], Real)
            and not isinstance(value[0], bool) and isinstance(value[1], (list, tuple))):
        raise PolicyError(f"{source}: an RFQuant record is [bops_g, [w bits], [a bits]], got {str(value)[:80]}")
    w, a = _bit_list(value[1], "the w list", source), _bit_list(value[2], "the a list", source)
    if len(w) != len(a):
        raise PolicyError(f"{source}: the w and a lists differ in length ({len(w)} vs {len(a)})")
    return value[0], w, a


def _python_assignments(text: str) -> dict:
    found = {}
    for key in ("weight_bits", "act_bits"):
        m = re.search(rf"\b{key}\s*[:=]\s*(\[[^\]]*\])", text)
        if m:
            found[key] = ast.literal_eval(m.group(1))
    return found


def _python_records(text: str) -> list:
    out = []
    for line in text.splitlines():
        line = line.strip().rstrip(",")
        if line and not line.startswith("#"):
            out.append(ast.literal_eval(line))
    return out


def read_form(path, form: str = "auto"):
    """(form, content): a Policy, {'weight_bits', 'act_bits'} lists, or a list of RFQuant records."""
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise MissingInput(f"{path}: file not found")
    text = read_text_input(path, "a policy.yaml or a bit-lists file", usual_name="policy.yaml")
    yaml_error = ""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:   # may still be Python lists; if not, say where the YAML broke
        doc, yaml_error = None, f" (as YAML: {yaml_error_where(e)})"
    if isinstance(doc, dict) and "format" in doc:
        if form not in ("auto", "policy"):
            raise PolicyError(f"{source}: is a policy.yaml, not {form} lists")
        if doc["format"] != FORMAT:
            raise PolicyError(f"{source}: unknown format {doc['format']!r} (expected {FORMAT!r})")
        return "policy", Policy.from_dict(doc, source=source)
    if not isinstance(doc, (dict, list)):
        try:
            doc = _python_assignments(text) or _python_records(text)
        except (ValueError, SyntaxError):
            raise PolicyError(f"{source}: neither a policy.yaml, LIMPQ lists nor RFQuant records"
                              f"{yaml_error}") from None
    if isinstance(doc, dict) and form in ("auto", "limpq"):
        if "weight_bits" not in doc or "act_bits" not in doc:
            raise PolicyError(f"{source}: LIMPQ lists need both 'weight_bits' and 'act_bits'")
        w, a = _bit_list(doc["weight_bits"], "weight_bits", source), _bit_list(doc["act_bits"], "act_bits", source)
        if len(w) != len(a):
            raise PolicyError(f"{source}: weight_bits and act_bits differ in length ({len(w)} vs {len(a)})")
        return "limpq", {"weight_bits": w, "act_bits": a}
    if isinstance(doc, list) and form in ("auto", "rfquant"):
        records = [doc] if doc and isinstance(doc[0], Real) else doc
        return "rfquant", [_record(r, source) for r in records]
    raise PolicyError(f"{source}: does not hold {form} content")


def to_policy(form: str, content, args, source: str, record: int | None = None) -> Policy:
    if form == "policy":
        return content
    need_model_args(args, f"converting {form} lists to a policy")
    fixed = fixed_bits_arg(args.fixed_bits)
    cost = cost_model(args.arch, args.num_classes, args.image_size, fixed)
    meta = {"imported_from": {"form": form, "file": source}}
    if form == "rfquant":
        if record is None and len(content) > 1:
            raise PolicyError(f"{source}: holds {len(content)} RFQuant records; pick one with --record N (0-based)")
        index = record or 0
        if not 0 <= index < len(content):
            raise PolicyError(f"{source}: --record {index} is out of range (0..{len(content) - 1})")
        bops, w, a = content[index]
        lists, meta["budget"] = {"weight_bits": w, "act_bits": a}, {"bitops_g": bops}
    else:
        lists = content
    try:
        return Policy.from_limpq_lists(lists, arch=args.arch, num_classes=args.num_classes,
                                       image_size=args.image_size, names=cost.names, fixed_bits=fixed, meta=meta)
    except PolicyError as e:   # entry counts, bits out of range
        raise PolicyError(f"{source}: {e}") from None


def run(args) -> None:
    form, content = read_form(args.input, args.source_form)
    if form == args.to:
        raise InputError(f"{args.input} is already in {form} form")
    policy = to_policy(form, content, args, str(args.input), args.record)
    if args.to == "limpq":
        emit(format_limpq(policy), args.out)
    elif args.to == "rfquant":
        emit(format_rfquant(policy), args.out)
    else:
        cost = policy_cost(policy, source=str(args.input))
        if args.out:
            policy.save(args.out, cost)
        else:
            emit(yaml.safe_dump(policy.to_dict(cost), sort_keys=False, default_flow_style=None, width=100))


def register(sub) -> None:
    ap = sub.add_parser("convert", help="policy.yaml <-> LIMPQ lists <-> RFQuant record",
                        description=__doc__.splitlines()[0])
    ap.add_argument("input", help="a policy.yaml, a LIMPQ lists file or an RFQuant record file")
    ap.add_argument("--to", required=True, choices=FORMS, help="form to write")
    ap.add_argument("--from", dest="source_form", default="auto", choices=("auto",) + FORMS,
                    help="form of the input (default: detected)")
    ap.add_argument("--out", default=None, help="output file (default: stdout)")
    ap.add_argument("--record", type=int, default=None, help="which RFQuant record of several (0-based)")
    add_model_args(ap)
    ap.set_defaults(run=run)
