"""The GPU-slot kit of issue 14, section 4 (bench/gpu_prepare.sh, bench/gpu_check.sh and
config/fidelity-cifar10-cuda.yaml): the scripts parse, and the CUDA config is the CPU fidelity
experiment's matrix on CUDA, valid, and plannable without data. Seconds, no GPU needed."""
import re
import shutil
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CUDA_CONFIG = REPO / "config/fidelity-cifar10-cuda.yaml"
CPU_CONFIG = REPO / "config/fidelity-cifar10.yaml"

pytestmark = pytest.mark.integration


def load(path):
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("script", ["bench/gpu_check.sh", "bench/gpu_prepare.sh"])
def test_script_parses(script):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    proc = subprocess.run([bash, "-n", str(REPO / script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def test_cuda_config_validates_against_the_schema():
    import jsonschema

    schema = load(REPO / "workflow/schemas/config.schema.yaml")
    config = load(CUDA_CONFIG)
    jsonschema.validate(config, schema)
    assert config["dataset"]["root"] and not Path(config["dataset"]["root"]).is_absolute()
    assert config["device"] == "cuda" and config["dataset"]["loader"] == "gpu"
    assert config["experiment"] == "fidelity-cifar10-resnet20-cuda"
    # ../shared does not travel to the device: the weights come from .gpu/ (bench/gpu_prepare.sh).
    assert config["pretrain"]["weights"] == ".gpu/resnet20-cifar10-published.th"
    # One GPU: every GPU rule asks for exactly one (more would launch torchrun with several processes).
    gpus = {rule: r["gpu"] for rule, r in config["resources"].items() if "gpu" in r}
    assert gpus and set(gpus.values()) == {1}, gpus


def test_cuda_config_keeps_the_policies_and_recipe_names_of_the_cpu_run():
    from mpq.config import validate_config

    schema = load(REPO / "workflow/schemas/config.schema.yaml")
    cpu, cuda = (validate_config(load(p), schema) for p in (CPU_CONFIG, CUDA_CONFIG))
    assert cuda["policies"] == cpu["policies"]
    assert list(cuda["finetune"]) == list(cpu["finetune"])
    for key in ("dataset", "model", "quant", "search", "seed"):
        if key == "dataset":
            same = {k: v for k, v in cpu[key].items() if k not in ("loader", "workers")}
            assert {k: cuda[key][k] for k in same} == same
        else:
            assert cuda[key] == cpu[key], key
    # Still one QAT schedule shared by every QAT recipe; only the schedule lengths differ from the CPU run.
    qat = [r for r in cuda["finetune"].values() if r.get("method", "lsq") not in ("ptq", "none")]
    for k in ("epochs", "lr", "data_fraction", "weight_decay", "label_smoothing", "bn_recalibration_images"):
        assert len({r.get(k) for r in qat}) == 1, k
    for name, recipe in cuda["finetune"].items():
        differs = {k for k in recipe if recipe[k] != cpu["finetune"][name].get(k)}
        assert differs <= {"epochs", "data_fraction"}, (name, differs)


def test_cuda_config_dry_runs_on_one_gpu(tmp_path):
    """A dry run in an empty directory (no data is read): every training and evaluation job plain
    Python on cuda with the gpu loader, none under torchrun."""
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                           str(tmp_path), "-n", "-p", "--cores", "16", "--resources", "gpu=1",
                           "--replace-workflow-config", "--configfile", str(CUDA_CONFIG)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MPQ_SKIP_MACHINE_CHECKS": "1"})   # a GPU machine's config
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    config = load(CUDA_CONFIG)
    table = proc.stdout.split("Job stats:", 1)[1]
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M))
    assert int(jobs["evaluate"]) == len(config["policies"]) and int(jobs["pretrain"]) == 1
    assert '"device":"cuda"' in proc.stdout and '"loader":"gpu"' in proc.stdout
    assert '"device":"cpu"' not in proc.stdout
    assert "starts under" not in proc.stderr   # the workflow says so for a rule under torchrun
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()
