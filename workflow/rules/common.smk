# All Python of the workflow: config validation, per-rule specs (exactly the config sections that
# affect each output, so params changes rerun precisely), input functions and target lists.
import hashlib
import json
import os
import re
import sys
from pathlib import Path

import yaml

from mpq.config import ConfigError, validate_config
from mpq.preflight import preflight
from mpq.registry import IMPORTANCE_RULES, SEARCH_METHODS, model_rule

WORKFLOW_DIR = Path(workflow.current_basedir).parent
STAGES = WORKFLOW_DIR.parent / "stages"

try:
    _validated = validate_config(config, yaml.safe_load((WORKFLOW_DIR / "schemas/config.schema.yaml").read_text()))
    # Before any job is scheduled: a mistake a stage would find costs the outputs Snakemake deletes
    # before running it. Cluster jobs run elsewhere, so the GPU check is left to their nodes.
    for note in preflight(_validated, local_jobs=workflow.local_exec):
        print(note, file=sys.stderr)
except ConfigError as e:
    sys.exit(str(e))
config.clear()
config.update(_validated)

RES = f"results/{config['experiment']}"
POLICIES = config["policies"]
NO_POLICY = "(?!x)x"   # a regular expression that matches nothing: a rule no policy goes to


PY = sys.executable


def stage_code(name):
    """Digest of the stage script, recorded as a param: editing the script reruns its rule, moving
    it (or touching it, as a fresh clone does) does not."""
    return hashlib.sha256((STAGES / f"{name}.py").read_bytes()).hexdigest()[:16]


def as_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


# --- resources -------------------------------------------------------------------------------
DEFAULT_RESOURCES = {
    "pretrain": {"threads": 2, "mem_mb": 4000, "runtime": 240},
    "train_indicators": {"threads": 2, "mem_mb": 4000, "runtime": 480},
    "extract_importance": {"threads": 1, "mem_mb": 2000, "runtime": 10},
    "train_supernet": {"threads": 2, "mem_mb": 4000, "runtime": 960},
    "ompq_importance": {"threads": 1, "mem_mb": 4000, "runtime": 30},
    "search": {"threads": 1, "mem_mb": 2000, "runtime": 30},
    "finetune": {"threads": 1, "mem_mb": 4000, "runtime": 480},
    "ptq": {"threads": 1, "mem_mb": 4000, "runtime": 120},
    "subnet": {"threads": 1, "mem_mb": 4000, "runtime": 60},
    "rfquant_front": {"threads": 1, "mem_mb": 4000, "runtime": 240},
    "evaluate": {"threads": 1, "mem_mb": 4000, "runtime": 60},
    "summarize": {"threads": 1, "mem_mb": 1000, "runtime": 10},
    "plot_policy": {"threads": 1, "mem_mb": 1000, "runtime": 10},
}
TRAINING_RULES = {"pretrain", "train_indicators", "train_supernet", "finetune", "ptq", "subnet", "evaluate",
                  "ompq_importance", "rfquant_front"}


# Ready jobs start in priority order (ties: Snakemake's own). The cached trainings head the longest
# chains (pretrain -> supernet -> front; pretrain -> indicators -> searches -> finetunes), so on a few
# cores they start first and the many short per-policy jobs fill the gaps around them, instead of
# holding them back (the digits default ran 19 s of uniform searches and charts before pretrain).
CRITICAL_PATH_PRIORITY = {"pretrain": 3, "train_supernet": 2, "train_indicators": 2, "extract_importance": 1,
                          "rfquant_front": 1}


def priority_of(rule_name):
    return CRITICAL_PATH_PRIORITY.get(rule_name, 0)


def launcher(rule_name):
    """The Python command of a training rule: torchrun (DDP, one process per GPU) when it asks for
    more than one GPU, plain Python otherwise. Resources are not params, so changing them reruns nothing."""
    gpus = res(rule_name, "gpu")
    if gpus > 1:
        return f"{PY} -m torch.distributed.run --standalone --nproc_per_node={gpus}"
    return PY


def res(rule_name, key):
    """Resource of a rule: config `resources.<rule>.<key>` overrides the defaults above."""
    override = config.get("resources", {}).get(rule_name, {})
    if key in override:
        return override[key]
    if key == "gpu":
        return 1 if config["device"] == "cuda" and rule_name in TRAINING_RULES else 0
    return DEFAULT_RESOURCES[rule_name][key]


def threads_of(rule_name):
    return res(rule_name, "threads")


def resources_of(rule_name):
    """The `resources:` of a rule: gpu (training rules only), mem_mb, runtime."""
    keys = ("gpu", "mem_mb", "runtime") if rule_name in TRAINING_RULES else ("mem_mb", "runtime")
    return {key: res(rule_name, key) for key in keys}


def stage_params(rule_name, launch=False):
    """The params of every stage's rule: its code digest. How to start the stage (this machine's
    interpreter, the script's path, torchrun for a multi-GPU training rule) is the environment
    variable MPQ_RUN_<rule> its shell command starts with, set here (a cluster job reads this file
    again on its node): Snakemake records a rule's params and shell command, and a project moved to
    another directory, a new clone or another venv must rerun nothing. Editing the script reruns
    the rule (its digest is recorded); changing the GPU count does not."""
    start = launcher(rule_name) if launch else PY
    if start != PY:   # not in the shell command Snakemake prints, so said here
        print(f"rule {rule_name} starts under {start.replace(PY, 'python', 1)} "
              f"(resources.{rule_name}.gpu: {res(rule_name, 'gpu')})", file=sys.stderr)
    os.environ[f"MPQ_RUN_{rule_name}"] = f"{start} {STAGES / rule_name}.py"
    return {"code": stage_code(rule_name)}


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
    """What the search reads, no more: the policy without its `finetune` (the recipe its model is
    then made with), so changing the recipe reruns the finetune and evaluation, not the search."""
    policy = {k: v for k, v in POLICIES[wildcards.policy].items() if k != "finetune"}
    spec = {"policy_name": wildcards.policy, "policy": policy, "model": config["model"],
            "image_size": config["dataset"]["image_size"], "quant": config["quant"]}
    method = SEARCH_METHODS[policy["search"]]
    settings = method.settings_for(config, policy)
    if settings is not None:
        spec["search"] = settings
    if method.needs_data:   # scores candidates on training batches
        spec.update(base_spec())
    return as_json(spec)


OMPQ_FEATURE_KEYS = ("samples", "augment", "bn_mode")   # the ompq_importance rule's; the rest are the search's


def ompq_spec():
    cfg = config["importance"]["ompq"]
    return as_json({**base_spec(), "ompq": {k: cfg[k] for k in OMPQ_FEATURE_KEYS}})


def supernet_spec():
    return as_json({**base_spec(), "quant": config["quant"], "rfquant": config["importance"]["rfquant"]})


def recipe_of(policy_name):
    """(name, recipe dict) of a policy's finetune; 'none' means no training at all."""
    name = POLICIES[policy_name]["finetune"]
    if name == "none":
        recipe = {"method": "none", "epochs": 0}
        if POLICIES[policy_name].get("importance") == "rfquant":   # the subnet's BN re-estimation
            recipe["bn_recalibration_images"] = config["importance"]["rfquant"]["bn_calibration_images"]
        return name, recipe
    return name, config["finetune"][name]


def finetune_spec(wildcards):
    name, recipe = recipe_of(wildcards.policy)
    if recipe.get("method") == "none":
        recipe = {**recipe, "epochs": 0}
    return as_json({**base_spec(), "quant": config["quant"], "recipe_name": name, "recipe": recipe})


def evaluate_spec(wildcards):
    return as_json({**base_spec(), "policy_name": wildcards.policy, "policy": POLICIES[wildcards.policy]})


def finetune_rule_of(policy_name):
    """Who makes a policy's model.pt - `subnet` (RFQuant, no retraining: weights from the
    supernet), `ptq` (calibration only) or `finetune` (QAT; epochs 0 = quantize and calibrate)."""
    return model_rule(recipe_of(policy_name)[1]["method"], POLICIES[policy_name].get("importance"))


def front_jobs():
    """{front: its points} of the retraining-free RFQuant fronts made in one job (`front_job`)."""
    fronts = {}
    for name, policy in POLICIES.items():
        if policy.get("front_job"):
            fronts.setdefault(policy["front"], []).append(name)
    return fronts


FRONT_JOBS = front_jobs()
IN_FRONT_JOB = {name for points in FRONT_JOBS.values() for name in points}


def one_of(names):
    """Wildcard constraint naming exactly `names` (none: a pattern nothing matches)."""
    return "|".join(re.escape(p) for p in names) if names else NO_POLICY


def policies_made_by(rule_name):
    """Wildcard constraint naming exactly the policies whose model.pt `rule_name` makes."""
    return one_of([p for p in POLICIES if p not in IN_FRONT_JOB and finetune_rule_of(p) == rule_name])


def per_point_policies():
    """Wildcard constraint of the search and evaluate rules: every policy outside a front job."""
    return one_of([p for p in POLICIES if p not in IN_FRONT_JOB])


def front_spec(front):
    """What a front job reads: its points' policies, the search settings and the subnet's BN
    re-estimation; adding a point reruns this one job (the other fronts and policies stay)."""
    points = FRONT_JOBS[front]
    policy = POLICIES[points[0]]
    spec = {**base_spec(), "image_size": config["dataset"]["image_size"], "quant": config["quant"],
            "search": SEARCH_METHODS[policy["search"]].settings_for(config, policy),
            "recipe_name": "none", "recipe": recipe_of(points[0])[1],
            "points": {p: POLICIES[p] for p in points}}
    return as_json(spec)


def front_rule_name(front):
    identifier = re.sub(r"\W", "_", front)
    return f"rfquant_front_{identifier}"


def front_files(front, kind):
    """One path per point of `front` for each file a point's three jobs would write."""
    if kind == "charts":   # bits.png (in the HTML report, as plot_policy's) and bits.svg per point
        return [path for p in FRONT_JOBS[front] for path in
                (report(f"{RES}/policies/{p}/bits.png", caption="../report/bits.rst", category="Policies",
                        subcategory=p), f"{RES}/policies/{p}/bits.svg")]
    pattern = {"policies": f"{RES}/policies/{{policy}}/policy.yaml", "models": f"{RES}/policies/{{policy}}/model.pt",
               "metrics": f"{RES}/policies/{{policy}}/metrics.json",
               "search_times": timing_file("search"), "model_times": timing_file("subnet"),
               "evaluate_times": timing_file("evaluate")}[kind]
    return [pattern.replace("{policy}", p) for p in FRONT_JOBS[front]]


# --- inputs and targets ------------------------------------------------------------------------
IMPORTANCE_FILES = {"limpq": f"{RES}/limpq/importance.pkl", "ompq": f"{RES}/ompq/importance.pkl",
                    "rfquant": f"{RES}/rfquant/supernet.pt"}


def search_inputs(wildcards):
    inputs = {}
    method = POLICIES[wildcards.policy].get("importance")
    if POLICIES[wildcards.policy]["search"] != "uniform" and method:
        inputs["importance"] = IMPORTANCE_FILES[method]
    if "accuracy_drop" in (POLICIES[wildcards.policy].get("budget") or {}):   # measured against FP32
        inputs["fp32"] = f"{RES}/pretrain/model.pt"
    return inputs


def importance_arg(wildcards, input):
    args = [f"--{name} {input[name]}" for name in ("importance", "fp32") if name in input.keys()]
    return " ".join(args)


def timing_file(rule_name):
    """Where a stage writes its wall time (a benchmark TSV): benchmarks/<rule>.tsv for the shared
    stages, benchmarks/<search|finetune|evaluate>/<policy>.tsv per policy (finetune, ptq and
    subnet write the same one: they make the same model). Rules whose model is update()-flagged
    flag it too, so a failed job keeps the old time with the old model (keep.smk)."""
    group = {"ptq": "finetune", "subnet": "finetune"}.get(rule_name, rule_name)
    if group in ("search", "finetune", "evaluate"):
        return f"{RES}/benchmarks/{group}/{{policy}}.tsv"
    return f"{RES}/benchmarks/{rule_name}.tsv"


def timing_files():
    """Every wall time the summary reports: the shared stages this config runs and each policy's."""
    shared = ["pretrain"]
    for name, pol in POLICIES.items():
        if pol["search"] != "uniform" and pol.get("importance"):
            shared += [r for r in IMPORTANCE_RULES[pol["importance"]] if r not in shared]
    per_policy = [expand(timing_file(r), policy=list(POLICIES)) for r in ("search", "finetune", "evaluate")]
    return [timing_file(r) for r in shared] + [f for files in per_policy for f in files]


def policy_metrics():
    return expand(f"{RES}/policies/{{policy}}/metrics.json", policy=list(POLICIES))


def summary_target():
    return f"{RES}/summary.csv"


def final_targets():
    """The summary (table and fronts) and every policy's bit chart."""
    return [summary_target()] + expand(f"{RES}/policies/{{policy}}/bits.png", policy=list(POLICIES))
