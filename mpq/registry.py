"""What each search and finetune method is and needs, in one table: the config checks, the
workflow (which importance file a search reads, which rule makes a policy's model) and the
schema's enums (a test holds them equal) all read it. Entries name their code as
"module:function", so reading the table imports no method (and no torch)."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field


def _resolve(entry: str):
    module, function = entry.split(":")
    return getattr(importlib.import_module(module), function)


@dataclass(frozen=True)
class SearchMethod:
    name: str
    importance: tuple[str, ...]   # the importance it reads (one of them); () = none
    needs_data: bool              # scores candidates on training images (its spec carries the data)
    own_bit_range: bool           # its bits need not be quant.candidates (uniform W8A8, OMPQ's range)
    budgets: tuple[str, ...]      # the budget kinds it meets; () = it takes none (the policy's bits)
    settings: str | None          # "module:function"(config, policy) -> the settings its spec carries
    entry: str                    # "module:function"(policy_cfg, cost, candidates, importance_path=,
    #                               settings=, data=, device=, seed=) -> (w_bits, a_bits, meta)

    def run(self, *args, **kwargs):
        return _resolve(self.entry)(*args, **kwargs)

    def settings_for(self, config: dict, policy: dict) -> dict | None:
        """The config keys this method reads, resolved for one policy (None: it reads none)."""
        return _resolve(self.settings)(config, policy) if self.settings else None


@dataclass(frozen=True)
class FinetuneMethod:
    name: str
    rule: str                                     # the workflow rule that makes its model.pt
    rule_by_importance: dict = field(default_factory=dict)   # a different rule for some importance


# The schema's budget keys: a policy gives at most one of each group.
BITOPS_BUDGETS = ("bitops", "bitops_g")
SIZE_BUDGETS = ("size_mb", "compression_ratio", "avg_weight_bits")
BUDGET_KINDS = BITOPS_BUDGETS + SIZE_BUDGETS
# A target on accuracy, not cost: the fewest BitOps within this many top-1 points of FP32 (greedy
# without retraining, measured on a validation split of the training data).
ACCURACY_BUDGETS = ("accuracy_drop",)

SEARCH_METHODS = {m.name: m for m in (
    SearchMethod("uniform", (), False, True, (), None, "mpq.search.uniform:search_uniform"),
    SearchMethod("ilp", ("limpq",), False, False, BUDGET_KINDS, "mpq.search.settings:ilp_settings",
                 "mpq.search.ilp:search_ilp"),
    SearchMethod("greedy", ("rfquant",), True, False, BITOPS_BUDGETS + ACCURACY_BUDGETS,
                 "mpq.search.settings:greedy_settings_of",
                 "mpq.rfquant.search:search_greedy"),
    SearchMethod("ompq", ("ompq",), False, True, BUDGET_KINDS, "mpq.search.settings:ompq_settings_of",
                 "mpq.ompq.search:search_ompq"),
)}

FINETUNE_METHODS = {m.name: m for m in (
    FinetuneMethod("lsq", "finetune"),
    FinetuneMethod("n2uq", "finetune"),
    FinetuneMethod("ptq", "ptq"),
    # no training: RFQuant takes the subnet's weights from the supernet; anything else quantizes
    # and calibrates the FP32 model (finetune with 0 epochs)
    FinetuneMethod("none", "finetune", {"rfquant": "subnet"}),
)}

# The rules that make each importance file the searches read (their wall times sum in the summary).
IMPORTANCE_RULES = {"limpq": ("train_indicators", "extract_importance"), "rfquant": ("train_supernet",),
                    "ompq": ("ompq_importance",)}


def search_method(name: str) -> SearchMethod:
    if name not in SEARCH_METHODS:
        from .errors import InputError

        raise InputError(f"search method {name!r} is unknown; use one of {', '.join(SEARCH_METHODS)}")
    return SEARCH_METHODS[name]


def model_rule(method: str, importance: str | None) -> str:
    """The workflow rule that makes a policy's model.pt from its finetune method and importance."""
    entry = FINETUNE_METHODS[method]
    return entry.rule_by_importance.get(importance, entry.rule)
