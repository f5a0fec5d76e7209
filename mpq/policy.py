"""The Policy type: per-layer (w, a) bits of one model, and its policy.yaml / LIMPQ-list forms.

policy.yaml is the interchange format between search, finetune, evaluate and the user
(DESIGN.md section 2). It is self-describing: per-layer MACs and params, fixed layers, the budget
asked for, the cost achieved and how the policy was found.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .io import atomic_write_yaml, read_yaml
from .bits import bit_range_text, is_full_precision, supported_bits
from .errors import InputError

FORMAT = "mpq-policy/1"


class PolicyError(InputError):
    """A policy that does not fit the model or the candidates."""


@dataclass
class Policy:
    arch: str
    num_classes: int
    image_size: int
    names: list[str]
    w_bits: list[int]
    a_bits: list[int]
    fixed_bits: tuple = ((8, 8), (8, 8))
    meta: dict = field(default_factory=dict)   # budget, achieved cost, search provenance

    def __post_init__(self):
        if not (len(self.names) == len(self.w_bits) == len(self.a_bits)):
            raise PolicyError(f"policy lists differ in length: {len(self.names)} names, "
                              f"{len(self.w_bits)} weight bits, {len(self.a_bits)} act bits")
        self.w_bits = [int(b) for b in self.w_bits]
        self.a_bits = [int(b) for b in self.a_bits]
        self._check_bit_range()

    def _check_bit_range(self) -> None:
        """Refuse bits no quantizer implements, so that `mpq cost` or `mpq convert` never prints the
        cost of a W9 or W1 layer; fixed layers may also be full precision (None or 32)."""
        for name, w, a in zip(self.names, self.w_bits, self.a_bits):
            if not (supported_bits(w) and supported_bits(a)):
                raise PolicyError(f"layer {name} has W{w}A{a}; bit-widths must be {bit_range_text()}")
        for role, pair in zip(("stem", "classifier"), self.fixed_bits):
            for b in pair:
                if not (is_full_precision(b) or supported_bits(int(b))):
                    raise PolicyError(f"fixed {role} has W{pair[0]}A{pair[1]}; bit-widths must be "
                                      f"{bit_range_text()} (or None/32 for full precision)")

    # --- checks ---------------------------------------------------------------------------------
    def check_model(self, names: list[str], source: str = "policy") -> None:
        if list(names) != list(self.names):
            missing = [n for n in names if n not in self.names]
            extra = [n for n in self.names if n not in names]
            differ = "; ".join(f"{what} {', '.join(found[:3])}{' ...' if len(found) > 3 else ''}"
                               for what, found in (("no entry for layer", missing), ("unknown layer", extra))
                               if found) or "the layers are in another order"
            raise PolicyError(f"{source}: layers do not match the model's {len(names)} searchable layers "
                              f"({differ}); search again for this model")

    def check_candidates(self, candidates, source: str = "policy") -> None:
        allowed = set(int(c) for c in candidates)
        for name, w, a in zip(self.names, self.w_bits, self.a_bits):
            if w not in allowed or a not in allowed:
                raise PolicyError(f"{source}: layer {name} has W{w}A{a} outside the candidates "
                                  f"{sorted(allowed)}; fix the policy or quant.candidates")

    # --- cost -----------------------------------------------------------------------------------
    def cost_summary(self, cost) -> dict:
        """Achieved cost under the accounting spec (cost is an mpq.cost.CostModel)."""
        out = {"bitops_g": round(cost.bitops(self.w_bits, self.a_bits) / 1e9, 6),
               "size_mb": round(cost.size_mib(self.w_bits), 6),
               "fp32_bitops_g": round(cost.fp32_bitops / 1e9, 6),
               "fp32_size_mb": round(cost.fp32_size_mib, 6),
               "compression_ratio": round(cost.compression_ratio(self.w_bits), 4)}
        out.update({k: round(v, 4) for k, v in cost.averages(self.w_bits, self.a_bits).items()})
        return out

    # --- LIMPQ lists ----------------------------------------------------------------------------
    def to_limpq_lists(self) -> dict:
        return {"weight_bits": list(self.w_bits), "act_bits": list(self.a_bits)}

    @classmethod
    def from_limpq_lists(cls, lists: dict, *, arch: str, num_classes: int, image_size: int,
                         names: list[str], **kw) -> "Policy":
        w, a = lists.get("weight_bits"), lists.get("act_bits")
        if w is None or a is None:
            raise PolicyError("LIMPQ policy needs both 'weight_bits' and 'act_bits' lists")
        if len(w) != len(names) or len(a) != len(names):
            raise PolicyError(f"LIMPQ lists have {len(w)}/{len(a)} entries but the model has "
                              f"{len(names)} searchable layers")
        return cls(arch, num_classes, image_size, list(names), list(w), list(a), **kw)

    # --- YAML -----------------------------------------------------------------------------------
    def to_dict(self, cost=None) -> dict:
        layers = []
        for i, (n, w, a) in enumerate(zip(self.names, self.w_bits, self.a_bits)):
            rec = {"name": n}
            if cost is not None:
                rec.update(macs=cost.macs[i], params=cost.params[i])
            rec.update(w_bits=w, a_bits=a)
            layers.append(rec)
        (sw, sa), (fw, fa) = self.fixed_bits
        fixed = [{"role": "stem", "w_bits": sw, "a_bits": sa}, {"role": "classifier", "w_bits": fw, "a_bits": fa}]
        if cost is not None:
            for rec, layer in zip(fixed, (cost.stem, cost.classifier)):
                rec.update(name=layer.name, macs=layer.macs, params=layer.params)
        doc = {"format": FORMAT,
               "model": {"arch": self.arch, "num_classes": self.num_classes, "image_size": self.image_size},
               "layers": layers, "fixed": fixed}
        if cost is not None:
            doc["achieved"] = self.cost_summary(cost)
        doc.update(self.meta)
        return doc

    def save(self, path, cost=None) -> None:
        atomic_write_yaml(path, self.to_dict(cost))

    @classmethod
    def from_dict(cls, doc: dict, source: str = "policy") -> "Policy":
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise PolicyError(f"{source}: not a policy file (expected 'format: {FORMAT}')")
        try:
            model, layers = doc["model"], doc["layers"]
            fixed = {f["role"]: (f["w_bits"], f["a_bits"]) for f in doc["fixed"]}
            meta = {k: v for k, v in doc.items() if k not in ("format", "model", "layers", "fixed", "achieved")}
            return cls(model["arch"], int(model["num_classes"]), int(model["image_size"]),
                       [r["name"] for r in layers], [r["w_bits"] for r in layers],
                       [r["a_bits"] for r in layers],
                       fixed_bits=(tuple(fixed["stem"]), tuple(fixed["classifier"])), meta=meta)
        except (KeyError, TypeError) as e:
            raise PolicyError(f"{source}: malformed policy file (missing {e}); regenerate it with the "
                              f"search stage") from None
        except PolicyError as e:   # lists of unequal length, bits out of range
            raise PolicyError(f"{source}: {e}") from None

    @classmethod
    def load(cls, path) -> "Policy":
        path = Path(path)
        if not path.exists():
            raise PolicyError(f"{path}: policy file not found; run the search stage first")
        try:
            doc = read_yaml(path, "a policy.yaml", usual_name="policy.yaml")
        except ValueError as e:
            raise PolicyError(str(e)) from None
        return cls.from_dict(doc, source=str(path))
