# All Python of the workflow: config validation, per-rule specs (exactly the config sections that
# affect each output, so params changes rerun precisely), input functions and target lists.
import json
import re
import sys
from pathlib import Path

import yaml

from mpq.config import ConfigError, validate_config

WORKFLOW_DIR = Path(workflow.current_basedir).parent
STAGES = WORKFLOW_DIR.parent / "stages"
PY = sys.executable

try:
    _validated = validate_config(config, yaml.safe_load((WORKFLOW_DIR / "schemas/config.schema.yaml").read_text()))
except ConfigError as e:
    sys.exit(str(e))
config.clear()
config.update(_validated)

RES = f"results/{config['experiment']}"
POLICIES = config["policies"]


wildcard_constraints:
    policy="|".join(re.escape(p) for p in POLICIES),


def stage(name):
    return str(STAGES / f"{name}.py")


def as_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


# --- resources -------------------------------------------------------------------------------
DEFAULT_RESOURCES = {
    "pretrain": {"threads": 2, "mem_mb": 4000, "runtime": 240},
    "train_indicators": {"threads": 2, "mem_mb": 4000, "runtime": 480},
    "extract_importance": {"threads": 1, "mem_mb": 2000, "runtime": 10},
    "search": {"threads": 1, "mem_mb": 2000, "runtime": 30},
    "finetune": {"threads": 1, "mem_mb": 4000, "runtime": 480},
    "evaluate": {"threads": 1, "mem_mb": 4000, "runtime": 60},
    "summarize": {"threads": 1, "mem_mb": 1000, "runtime": 10},
}
TRAINING_RULES = {"pretrain", "train_indicators", "finetune", "evaluate"}


def res(rule_name, key):
    """Resource of a rule: config `resources.<rule>.<key>` overrides the defaults above."""
    override = config.get("resources", {}).get(rule_name, {})
    if key in override:
        return override[key]
    if key == "gpu":
        return 1 if config["device"] == "cuda" and rule_name in TRAINING_RULES else 0
    return DEFAULT_RESOURCES[rule_name][key]


# --- per-rule specs ----------------------------------------------------------------------------
def base_spec():
    return {"seed": config["seed"], "device": config["device"], "dataset": config["dataset"],
            "model": config["model"]}


def pretrain_spec():
    return as_json({**base_spec(), "pretrain": config["pretrain"]})


def indicators_spec():
    return as_json({**base_spec(), "quant": config["quant"], "limpq": config["importance"]["limpq"]})


def extract_spec():
    return as_json({"model": config["model"], "quant": config["quant"], "limpq": config["importance"]["limpq"]})


def search_spec(wildcards):
    policy = POLICIES[wildcards.policy]
    spec = {"policy_name": wildcards.policy, "policy": policy, "model": config["model"],
            "image_size": config["dataset"]["image_size"], "quant": config["quant"]}
    if policy["search"] != "uniform":
        spec["search"] = {**config["search"], **{k: policy[k] for k in ("alpha", "solver") if k in policy}}
    return as_json(spec)


def finetune_spec(wildcards):
    name = POLICIES[wildcards.policy].get("finetune", "none")
    recipe = {"epochs": 0} if name == "none" else config["finetune"][name]
    return as_json({**base_spec(), "quant": config["quant"], "recipe_name": name, "recipe": recipe})


def evaluate_spec(wildcards):
    return as_json({**base_spec(), "policy_name": wildcards.policy, "policy": POLICIES[wildcards.policy]})


# --- inputs and targets ------------------------------------------------------------------------
IMPORTANCE_FILES = {"limpq": f"{RES}/limpq/importance.pkl"}


def search_inputs(wildcards):
    inputs = {"script": stage("search")}
    method = POLICIES[wildcards.policy].get("importance")
    if POLICIES[wildcards.policy]["search"] != "uniform" and method:
        inputs["importance"] = IMPORTANCE_FILES[method]
    return inputs


def importance_arg(wildcards, input):
    return f"--importance {input.importance}" if "importance" in input.keys() else ""


def policy_metrics():
    return expand(f"{RES}/policies/{{policy}}/metrics.json", policy=list(POLICIES))


def summary_target():
    return f"{RES}/summary.csv"
