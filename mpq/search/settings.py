"""What each search method's spec carries from the config: its settings section, resolved with
the schema's defaults and the policy's own overrides. The workflow puts them in the search
rule's spec (so changing one reruns exactly the searches that read it) and the search reads them
back. Importing this module loads no torch (the workflow calls it while building the DAG)."""
from __future__ import annotations

from ..config import section_defaults
from ..ompq.search import ompq_settings

ILP_POLICY_KEYS = ("alpha", "solver")   # a policy may override these `search` keys


RFQUANT_SUBSECTIONS = ("greedy", "accuracy")   # of `search`: read by greedy policies only


def ilp_settings(config: dict, policy: dict) -> dict:
    """`search` without its RFQuant subsections, overridden by the policy."""
    section = {k: v for k, v in section_defaults("search", config.get("search")).items()
               if k not in RFQUANT_SUBSECTIONS}
    return {**section, **{k: policy[k] for k in ILP_POLICY_KEYS if k in policy}}


def greedy_settings_of(config: dict, policy: dict) -> dict:
    """`search.greedy` (a policy overrides none of it); for an accuracy target also `search.accuracy`
    and the subnet's BN re-estimation size, under `accuracy` (other policies' specs stay as they were)."""
    search = config.get("search") or {}
    settings = section_defaults("search.greedy", search.get("greedy"))
    if "accuracy_drop" in (policy.get("budget") or {}):
        rfquant = section_defaults("importance.rfquant", (config.get("importance") or {}).get("rfquant"))
        settings["accuracy"] = {**section_defaults("search.accuracy", search.get("accuracy")),
                                "bn_calibration_images": rfquant["bn_calibration_images"]}
    return settings


def ompq_settings_of(config: dict, policy: dict) -> dict:
    """The search keys of `importance.ompq`, overridden by the policy, bit range resolved."""
    return ompq_settings((config.get("importance") or {}).get("ompq"), policy)
