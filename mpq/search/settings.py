"""What each search method's spec carries from the config: its settings section, resolved with
the schema's defaults and the policy's own overrides. The workflow puts them in the search
rule's spec (so changing one reruns exactly the searches that read it) and the search reads them
back. Importing this module loads no torch (the workflow calls it while building the DAG)."""
from __future__ import annotations

from ..config import section_defaults
from ..ompq.search import ompq_settings

ILP_POLICY_KEYS = ("alpha", "solver")   # a policy may override these `search` keys


def ilp_settings(config: dict, policy: dict) -> dict:
    """`search` without its `greedy` subsection (RFQuant's), overridden by the policy."""
    section = {k: v for k, v in section_defaults("search", config.get("search")).items() if k != "greedy"}
    return {**section, **{k: policy[k] for k in ILP_POLICY_KEYS if k in policy}}


def greedy_settings_of(config: dict, policy: dict) -> dict:
    """`search.greedy` (a policy overrides none of it)."""
    return section_defaults("search.greedy", (config.get("search") or {}).get("greedy"))


def ompq_settings_of(config: dict, policy: dict) -> dict:
    """The search keys of `importance.ompq`, overridden by the policy, bit range resolved."""
    return ompq_settings((config.get("importance") or {}).get("ompq"), policy)
