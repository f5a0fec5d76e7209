"""Every stage refuses bad input with one 'error:' line naming the file, the problem and the fix,
and leaves existing results untouched."""
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mpq import models
from mpq.checkpoint import save_checkpoint
from mpq.config import resolve_spec
from mpq.cost import CostModel
from mpq.importance_file import Importance, write_importance
from mpq.policy import Policy

REPO = Path(__file__).resolve().parents[2]
DATASET = {"name": "digits", "image_size": 16, "batch_size": 128}
MODEL = {"arch": "resnet8", "num_classes": 10}
QUANT = {"candidates": [6, 5, 4, 3, 2], "fixed_layers": {"first": [8, 8], "last": [8, 8]}}
SENTINEL = b"existing result, must survive\n"

pytestmark = pytest.mark.integration


def run_stage(name, spec, *args):
    return subprocess.run([sys.executable, str(REPO / "stages" / f"{name}.py"), "--spec", json.dumps(resolve_spec(spec)),
                           *map(str, args)], capture_output=True, text=True)


def assert_one_line_error(proc, *phrases):
    assert proc.returncode == 1, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    model = models.create("resnet8", num_classes=10)
    save_checkpoint(d / "fp32.pt", state_dict=model.state_dict(), arch="resnet8", num_classes=10, kind="fp32",
                    config={})
    other = models.create("resnet20", num_classes=10)
    save_checkpoint(d / "fp32_resnet20.pt", state_dict=other.state_dict(), arch="resnet20", num_classes=10,
                    kind="fp32", config={})
    (d / "truncated.pt").write_bytes((d / "fp32.pt").read_bytes()[:5000])
    from PIL import Image

    Image.new("RGB", (8, 8)).save(d / "photo.jpg")
    cost = CostModel.from_model(model, 16)
    n = len(cost.names)
    Policy("resnet8", 10, 16, cost.names, [4] * n, [4] * n,
           meta={"search": {"method": "ilp"}}).save(d / "policy.yaml", cost)
    Policy("resnet8", 10, 16, cost.names, [7] * n, [4] * n,
           meta={"search": {"method": "ilp"}}).save(d / "policy_bits.yaml", cost)
    Policy("resnet8", 10, 16, cost.names[:2] + cost.names[3:], [4] * (n - 1), [4] * (n - 1),
           meta={"search": {"method": "ilp"}}).save(d / "policy_missing.yaml")
    cost20 = CostModel.from_model(other, 32)
    Policy("resnet20", 10, 32, cost20.names, [4] * len(cost20.names), [4] * len(cost20.names),
           meta={"search": {"method": "ilp"}}).save(d / "policy_resnet20.yaml", cost20)
    steps = {b: 0.01 * (7 - b) for b in QUANT["candidates"]}
    write_importance(d / "importance.pkl", Importance(cost.names, QUANT["candidates"],
                                                      {k: dict(steps) for k in cost.names},
                                                      {k: dict(steps) for k in cost.names}))
    wrong = [f"other.{k}" for k in cost.names]
    write_importance(d / "importance_wrong.pkl", Importance(wrong, QUANT["candidates"],
                                                            {k: dict(steps) for k in wrong},
                                                            {k: dict(steps) for k in wrong}))
    return d


@pytest.fixture
def existing(tmp_path):
    out = tmp_path / "result"
    out.write_bytes(SENTINEL)
    yield out
    assert out.read_bytes() == SENTINEL, "an existing result was changed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"], "stray files were left behind"


def finetune_spec():
    return {"seed": 0, "device": "cpu", "dataset": DATASET, "model": MODEL, "quant": QUANT,
            "recipe_name": "lsq", "recipe": {"epochs": 1, "lr": 0.01}}


def search_spec(budget, **policy):
    return {"policy_name": "p", "policy": {"search": "ilp", "importance": "limpq", "budget": budget, **policy},
            "model": MODEL, "image_size": 16, "quant": QUANT, "search": {"alpha": 2.0}}


@pytest.mark.parametrize("fp32, phrases", [
    ("missing.pt", ["missing.pt", "checkpoint not found", "run the stage"]),
    ("truncated.pt", ["truncated.pt", "not a readable checkpoint", "rerun the stage"]),
    ("fp32_resnet20.pt", ["fp32_resnet20.pt", "arch 'resnet20'", "'resnet8'", "fix model.arch"]),
    ("photo.jpg", ["photo.jpg", "not a readable checkpoint (UnpicklingError: the weights-only loader refused "
                   "it: Unsupported operand 255); delete it"]),   # torch's own reason, not cut mid-word
])
def test_finetune_refuses_bad_checkpoints(files, existing, fp32, phrases):
    proc = run_stage("finetune", finetune_spec(), "--policy", files / "policy.yaml", "--fp32", files / fp32,
                     "--out", existing)
    assert_one_line_error(proc, *phrases)


def test_finetune_refuses_checkpoint_with_other_class_count(files, existing):
    spec = {**finetune_spec(), "model": {"arch": "resnet8", "num_classes": 100}}
    proc = run_stage("finetune", spec, "--policy", files / "policy.yaml", "--fp32", files / "fp32.pt",
                     "--out", existing)
    assert_one_line_error(proc, "10 classes", "asks for 100", "model.num_classes")


@pytest.mark.parametrize("policy, phrases", [
    ("policy_resnet20.yaml", ["policy_resnet20.yaml", "resnet20", "search again"]),
    ("policy_bits.yaml", ["policy_bits.yaml", "W7A4 outside the candidates"]),
    ("policy_missing.yaml", ["policy_missing.yaml", "no entry for layer layer2.0.conv1", "search again"]),
])
def test_finetune_refuses_policies_that_do_not_fit(files, existing, policy, phrases):
    proc = run_stage("finetune", finetune_spec(), "--policy", files / policy, "--fp32", files / "fp32.pt",
                     "--out", existing)
    assert_one_line_error(proc, *phrases)


def test_search_refuses_importance_of_other_layers(files, existing):
    proc = run_stage("search", search_spec({"bitops": "w4a4"}), "--importance", files / "importance_wrong.pkl",
                     "--out", existing)
    assert_one_line_error(proc, "importance_wrong.pkl")


def test_search_states_the_smallest_achievable_budget(files, existing):
    proc = run_stage("search", search_spec({"size_mb": 0.005}), "--importance", files / "importance.pkl",
                     "--out", existing)
    assert_one_line_error(proc, "below the smallest achievable", "MiB")


def test_search_refuses_a_budget_above_fp32(files, existing):
    proc = run_stage("search", search_spec({"bitops_g": 100.0}), "--importance", files / "importance.pkl",
                     "--out", existing)
    assert_one_line_error(proc, "above the FP32 model's", "lower it")


def test_search_refuses_a_pickle_that_would_run_code(files, existing, tmp_path_factory):
    marker = tmp_path_factory.mktemp("evil") / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path_factory.mktemp("evil2") / "importance.pkl"
    evil.write_bytes(pickle.dumps({"weight": Payload(), "act": {}, "layer_name": []}))
    proc = run_stage("search", search_spec({"bitops": "w4a4"}), "--importance", evil, "--out", existing)
    assert_one_line_error(proc, str(evil), "may hold only")
    assert not marker.exists(), "the pickle's payload ran"


def test_pretrain_refuses_a_malformed_image_folder(tmp_path, existing):
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    spec = {"seed": 0, "device": "cpu", "dataset": {"name": "imagefolder", "root": str(root), "image_size": 16,
                                                    "batch_size": 8},
            "model": MODEL, "pretrain": {"epochs": 1, "lr": 0.1}}
    proc = run_stage("pretrain", spec, "--model-out", existing, "--metrics-out", tmp_path / "metrics.json")
    assert_one_line_error(proc, str(root))
    shutil_rm(root)


def test_pretrain_refuses_a_one_class_image_folder(tmp_path, existing):
    from PIL import Image

    root = tmp_path / "data"
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (16, 16), (80 * i, 0, 0)).save(root / split / "images" / f"{i}.jpg")
    spec = {"seed": 0, "device": "cpu", "dataset": {"name": "imagefolder", "root": str(root), "image_size": 16,
                                                    "batch_size": 8},
            "model": MODEL, "pretrain": {"epochs": 1, "lr": 0.1}}
    proc = run_stage("pretrain", spec, "--model-out", existing, "--metrics-out", tmp_path / "metrics.json")
    assert_one_line_error(proc, f"{root}/train has one class folder (images/)", "a classifier needs at least 2",
                          f"{root}/train/<class>/<image>")
    shutil_rm(root)


STAGE_FILES = {   # the file arguments of each stage with a --spec; none is read before the spec is checked
    "pretrain": ["--model-out", "{out}", "--metrics-out", "{out}"],
    "train_indicators": ["--fp32", "{fp32}", "--out", "{out}"],
    "extract_importance": ["--indicators", "{fp32}", "--out", "{out}", "--meta-out", "{out}"],
    "train_supernet": ["--fp32", "{fp32}", "--out", "{out}"],
    "ompq_importance": ["--fp32", "{fp32}", "--out", "{out}"],
    "search": ["--out", "{out}"],
    "finetune": ["--policy", "{policy}", "--fp32", "{fp32}", "--out", "{out}"],
    "ptq": ["--policy", "{policy}", "--fp32", "{fp32}", "--out", "{out}"],
    "subnet": ["--policy", "{policy}", "--supernet", "{fp32}", "--out", "{out}"],
    "evaluate": ["--model", "{fp32}", "--out", "{out}"],
    "rfquant_front": ["--supernet", "{fp32}", *(arg for name in ("policies", "models", "metrics", "search-times",
                                                                  "model-times", "evaluate-times")
                                                for arg in (f"--{name}", "{out}")), "--charts", "{out}", "{out}"],
}


@pytest.mark.parametrize("name", sorted(STAGE_FILES))
def test_every_stage_names_the_spec_keys_it_misses(files, existing, name):
    assert {p.stem for p in (REPO / "stages").glob("*.py")} - set(STAGE_FILES) == {"plot_policy", "summarize"}
    args = [a.format(out=existing, fp32=files / "fp32.pt", policy=files / "policy.yaml") for a in STAGE_FILES[name]]
    proc = run_stage(name, {}, *args)   # was `error: 'model'` (or 'dataset'): a bare KeyError
    assert_one_line_error(proc, "--spec has no ", "'model'", "; give every key this stage needs: ")


def shutil_rm(path):
    import shutil

    shutil.rmtree(path)
