"""The workflow end to end on the embedded digits dataset (tiny epochs), plus dry-run rerun rules."""
import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tiny_workflow import QUANTIZED, REPO, TINY, job_counts, planned_jobs, snakemake, write_config

pytestmark = pytest.mark.integration


def test_summary_has_fp32_and_every_policy(finished_run):
    rows = list(csv.DictReader(open(finished_run / "results/tiny/summary.csv")))
    by_name = {r["policy"]: r for r in rows}
    assert set(by_name) == {"fp32", *QUANTIZED}
    fp32 = by_name["fp32"]
    assert float(fp32["top1"]) > 80.0, "six epochs of FP32 training on digits should exceed 80%"
    for name in QUANTIZED:
        r = by_name[name]
        assert 0 < float(r["bitops_g"]) < float(fp32["bitops_g"])
        assert 0 < float(r["size_mb"]) < float(fp32["size_mb"])
        assert float(r["top1"]) > 30.0
    pol = yaml.safe_load(open(finished_run / "results/tiny/policies/limpq-w3a3/policy.yaml"))
    assert pol["achieved"]["bitops_g"] <= pol["budget"]["bitops_g"] + 1e-9
    assert pol["search"]["method"] == "ilp" and pol["search"]["status"].lower() == "optimal"
    size_pol = yaml.safe_load(open(finished_run / "results/tiny/policies/limpq-size/policy.yaml"))
    assert size_pol["achieved"]["size_mb"] <= 0.022 + 1e-9
    for log in ("pretrain.log", "train_indicators.log", "train_supernet.log", "finetune/limpq-w3a3.log"):
        assert "epoch 1/" in (finished_run / "results/tiny/logs" / log).read_text(), log
    rf = yaml.safe_load(open(finished_run / "results/tiny/policies/rfquant-w4a4/policy.yaml"))
    assert rf["search"]["method"] == "greedy" and rf["achieved"]["bitops_g"] <= rf["budget"]["bitops_g"] + 1e-9
    om = yaml.safe_load(open(finished_run / "results/tiny/policies/ompq-ptq/policy.yaml"))
    assert om["search"]["method"] == "ompq" and om["achieved"]["size_mb"] <= 0.0274 + 1e-9
    assert by_name["ompq-ptq"]["finetune"] == "ptq" and by_name["w3a3-dampen"]["finetune"] == "lsq-dampen"
    # Each model.pt came from the rule its recipe names.
    for rule, policy in (("subnet", "rfquant-w4a4"), ("ptq", "ompq-ptq"), ("finetune", "w3a3-dampen")):
        assert (finished_run / f"results/tiny/logs/{rule}/{policy}.log").is_file(), (rule, policy)


def test_figures_are_written(finished_run):
    res = finished_run / "results/tiny"
    for stem in ("figures/top1_vs_bitops", "figures/top1_vs_size", "policies/limpq-w3a3/bits"):
        for ext in ("png", "svg"):
            path = res / f"{stem}.{ext}"
            assert path.is_file() and path.stat().st_size > 2000, path
    assert (res / "figures/top1_vs_bitops.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(res / "summary.csv")))
    timed = {r["policy"]: r for r in rows}
    assert float(timed["fp32"]["time_pretrain_s"]) > 0
    assert float(timed["limpq-w3a3"]["time_finetune_s"]) > 0 and float(timed["limpq-w3a3"]["time_search_s"]) > 0


def test_nothing_to_do_after_a_complete_run(finished_run):
    assert planned_jobs(finished_run) == {}


def test_changing_one_budget_reruns_only_that_policy(finished_run, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(finished_run, workdir, symlinks=True)
    cfg = yaml.safe_load((workdir / "config/config.yaml").read_text())
    cfg["policies"]["limpq-w3a3"]["budget"] = {"bitops": "w4a3"}
    write_config(workdir, cfg)
    jobs = planned_jobs(workdir)
    assert jobs == {"search": 1, "finetune": 1, "evaluate": 1, "plot_policy": 1, "summarize": 1, "all": 1}, jobs
    plan = snakemake(workdir, "-n").stdout
    assert "results/tiny/policies/limpq-w3a3/policy.yaml" in plan
    assert "results/tiny/policies/limpq-size/policy.yaml" not in plan


def test_adding_an_rfquant_budget_reuses_the_supernet(finished_run, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(finished_run, workdir, symlinks=True)
    cfg = yaml.safe_load((workdir / "config/config.yaml").read_text())
    cfg["policies"]["rfquant-w3a3"] = {"search": "greedy", "importance": "rfquant", "budget": {"bitops": "w3a3"},
                                       "finetune": "none"}
    write_config(workdir, cfg)
    jobs = planned_jobs(workdir)
    assert jobs == {"search": 1, "subnet": 1, "evaluate": 1, "plot_policy": 1, "summarize": 1, "all": 1}, jobs
    plan = snakemake(workdir, "-n").stdout
    assert "rfquant/supernet.pt" not in [ln.split(":", 1)[1].strip() for ln in plan.splitlines()
                                         if ln.strip().startswith("output:")]


def test_changing_a_finetune_recipe_never_reruns_pretrain_or_search(finished_run, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(finished_run, workdir, symlinks=True)
    cfg = yaml.safe_load((workdir / "config/config.yaml").read_text())
    cfg["finetune"]["lsq"]["epochs"] = 2
    write_config(workdir, cfg)
    jobs = planned_jobs(workdir)
    assert jobs == {"finetune": 3, "evaluate": 3, "summarize": 1, "all": 1}, jobs


def test_changing_only_a_policys_finetune_reruns_its_finetune_not_its_search(finished_run, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(finished_run, workdir, symlinks=True)
    cfg = yaml.safe_load((workdir / "config/config.yaml").read_text())
    cfg["policies"]["limpq-w3a3"]["finetune"] = "lsq-dampen"
    write_config(workdir, cfg)
    jobs = planned_jobs(workdir)
    assert jobs == {"finetune": 1, "evaluate": 1, "summarize": 1, "all": 1}, jobs
    plan = snakemake(workdir, "-n").stdout
    outputs = [out.removesuffix(" (update)") for ln in plan.splitlines() if ln.strip().startswith("output:")
               for out in ln.split(":", 1)[1].strip().split(", ")]
    assert "results/tiny/policies/limpq-w3a3/model.pt" in outputs
    assert not [o for o in outputs if "policy.yaml" in o], outputs


def checkout_copy(where: Path, edit=None) -> Path:
    """The workflow as a fresh clone elsewhere would have it: every tracked file copied with a new
    mtime, optionally one file edited (`edit`: path -> function of its text)."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in tracked.split():
        if name.startswith(("workflow/", "stages/", "profiles/")) or name == "Snakefile":
            (where / name).parent.mkdir(parents=True, exist_ok=True)
            text = (REPO / name).read_text()
            (where / name).write_text(edit[name](text) if edit and name in edit else text)
    return where


def dry_run(snakefile_dir: Path, workdir: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(snakefile_dir / "Snakefile"), "--directory",
                           str(workdir), "--cores", "2", "-n"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_a_project_moved_elsewhere_with_a_fresh_clone_reruns_nothing(finished_run, tmp_path):
    """Snakemake records no path of this machine (interpreter, scripts): results copied to another
    directory, run by a clone in a third one (new mtimes on every script), plan nothing."""
    moved = tmp_path / "scratch" / "deeper" / "project"
    shutil.copytree(finished_run, moved, symlinks=True)
    clone = checkout_copy(tmp_path / "clone")
    plan = dry_run(clone, moved)
    assert "Nothing to be done" in plan, plan[-3000:]


def test_changing_a_default_in_the_schema_reruns_exactly_its_rules(finished_run, tmp_path):
    """Defaults live in the schema and the specs carry them: a new default of the supernet's
    gradient clip (a key the tiny config does not set) reruns the supernet and what reads it."""
    workdir = tmp_path / "copy"
    shutil.copytree(finished_run, workdir, symlinks=True)
    schema = "workflow/schemas/config.schema.yaml"
    old = "grad_clip: {type: number, exclusiveMinimum: 0, default: 1.0"
    assert old in (REPO / schema).read_text() and "grad_clip" not in TINY["importance"]["rfquant"]
    clone = checkout_copy(tmp_path / "clone", {schema: lambda text: text.replace(old, old.replace("1.0", "2.0"))})
    assert job_counts(dry_run(clone, workdir)) == {"train_supernet": 1, "search": 1, "plot_policy": 1, "subnet": 1,
                                                   "evaluate": 1, "rfquant_front_rfquant_front": 1, "summarize": 1,
                                                   "all": 1}


def test_lint_finds_only_kinds_config_readme_explains():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "MPQ_SKIP_MACHINE_CHECKS": "1"})
    kinds = set(re.findall(r"^\s+\* (.+?):$", proc.stdout + proc.stderr, re.M))
    explained = (REPO / "config/README.md").read_text().split("## Snakemake's lint", 1)[1]
    assert kinds, proc.stdout[-2000:] + proc.stderr[-2000:]   # the lint ran
    assert [k for k in kinds if f"**{k}**" not in explained] == []


def test_a_yaml_syntax_error_in_the_config_names_file_and_line(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(
        "experiment: tiny\nmodel: {arch: resnet8, num_classes: 10}\npolicies:\n"
        "  u: {search: uniform, bits: [4, 4]\n  v: {search: uniform, bits: [3, 3]}\n")
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "config error" in ln]
    assert lines == ["config error: config/config.yaml: YAML syntax error at line 5, column 3: expected ',' or "
                     "'}', but got '<scalar>' (while parsing a flow mapping that starts at line 4, column 6); "
                     "fix that line"], proc.stdout + proc.stderr


def test_a_stale_lock_says_to_unlock(tmp_path):
    """Snakemake itself names --unlock (the lock is checked after the workflow is read, so no hook of
    ours comes first); this guards the README's "Recovering" advice."""
    write_config(tmp_path, {**TINY, "policies": {"u": {"search": "uniform", "bits": [4, 4]}}})
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text("results/tiny/pretrain/model.pt\n")   # as a killed run leaves it
    proc = snakemake(tmp_path, "results/tiny/pretrain/model.pt", check=False)
    said = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Directory cannot be locked" in said and "--unlock" in said, said
    assert not (tmp_path / "results/tiny/pretrain/model.pt").exists()
    assert "snakemake --unlock" in (REPO / "README.md").read_text()


def test_bad_config_key_fails_with_one_line(tmp_path):
    cfg = {**TINY, "policies": {"p": {"search": "uniform", "bits": [4, 4], "budgte": 1}}}
    write_config(tmp_path, cfg)
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "config error" in ln]
    assert lines == ["config error: unknown key policies.p.budgte; allowed here: act_bits, alpha, avg_bits, beta, "
                     "bits, budget, count_bn_params, finetune, front, front_job, importance, mode, search, solver"]
    assert not (tmp_path / "results").exists()


def test_bad_config_type_names_the_key(tmp_path):
    cfg = {**TINY, "pretrain": {"epochs": "many"}}
    write_config(tmp_path, cfg)
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    assert "config error: pretrain.epochs: 'many' is not of type 'integer'" in proc.stdout + proc.stderr


@pytest.mark.parametrize("change, phrase", [
    ({"model": {"arch": "resnet8", "num_classes": 5}}, "set model.num_classes: 10"),
    ({"dataset": {"name": "imagefolder", "root": "no/such/folder", "image_size": 16}}, "dataset.root"),
    ({"device": "cuda"}, "torch sees no CUDA GPU"),
])
def test_a_mistake_a_stage_would_find_fails_before_any_output_is_deleted(finished_run, tmp_path, change, phrase):
    """Snakemake deletes a job's outputs before it runs: these mistakes must stop the workflow first."""
    import torch

    if "device" in change and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    workdir = tmp_path / "copy"
    shutil.copytree(finished_run, workdir, symlinks=True)
    kept = {p: p.read_bytes() for p in (workdir / "results").rglob("*") if p.is_file()}
    write_config(workdir, {**TINY, **change})
    proc = snakemake(workdir, check=False)   # a real run, not a dry run
    assert proc.returncode != 0
    errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("config error")]
    assert len(errors) == 1 and phrase in errors[0], proc.stderr[-2000:]
    assert {p: p.read_bytes() for p in (workdir / "results").rglob("*") if p.is_file()} == kept


def test_a_failed_pretrain_keeps_the_previous_model_and_its_provenance(finished_run, tmp_path):
    """A failure only the stage sees (weights that do not load): the FP32 model and its metrics come
    back as they were, bytes, mtime and Snakemake's record, so the next run with the old config has
    nothing to do and one with the new config still reruns pretraining."""
    workdir = tmp_path / "copy"
    shutil.copytree(finished_run, workdir, symlinks=True)
    (workdir / "broken.pth").write_bytes(b"not a checkpoint")
    files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (workdir / "results").rglob("*")
             if p.is_file() and "logs" not in p.parts and "benchmarks" not in p.parts}
    write_config(workdir, {**TINY, "pretrain": {"weights": "broken.pth"}})
    proc = snakemake(workdir, check=False)
    assert proc.returncode != 0
    assert "kept results/tiny/pretrain/model.pt as it was before this run" in proc.stderr
    summary = workdir / "results/tiny/summary.csv"
    stale = workdir / "results/tiny/summary.stale.csv"
    assert not summary.exists() and stale.read_bytes() == files.pop(summary)[0]   # no longer looks current
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files} == files
    assert "pretrain" in planned_jobs(workdir)
    write_config(workdir, TINY)
    assert planned_jobs(workdir) == {"summarize": 1, "all": 1}   # only the summary to write again
    snakemake(workdir)
    assert summary.exists() and not stale.exists()


def test_an_interrupted_run_keeps_every_output_and_leaves_nothing_to_redo(finished_run, tmp_path):
    """Ctrl-C (SIGINT to Snakemake's process group, as a terminal sends it) while a changed pretrain
    runs: every finished file keeps its bytes and mtime, and with the config put back nothing but
    the summary runs again (Snakemake alone would leave the kept files marked incomplete, and
    `rerun-incomplete` would retrain them)."""
    import os
    import signal
    import subprocess
    import time

    from tiny_workflow import SNAKEMAKE

    workdir = tmp_path / "copy"
    shutil.copytree(finished_run, workdir, symlinks=True)
    files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (workdir / "results").rglob("*")
             if p.is_file() and "logs" not in p.parts and "benchmarks" not in p.parts}
    summary = workdir / "results/tiny/summary.csv"
    files.pop(summary)
    write_config(workdir, {**TINY, "pretrain": {**TINY["pretrain"], "epochs": 400}})
    log = workdir / "results/tiny/logs/pretrain.log"
    log.unlink()
    proc = subprocess.Popen([*SNAKEMAKE, "--directory", str(workdir), "--cores", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not (log.is_file() and "pretrain epoch 2/400" in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "pretraining never got to epoch 2"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "interrupted by SIGINT" in log.read_text(), out[-3000:]
    assert "kept results/tiny/pretrain/model.pt as it was before this run: its job was interrupted" in out
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files} == files
    assert (workdir / "results/tiny/summary.stale.csv").is_file() and not summary.exists()
    write_config(workdir, TINY)
    assert planned_jobs(workdir) == {"summarize": 1, "all": 1}   # only the summary to write again


def test_a_truncated_checkpoint_input_stops_the_run_before_its_readers_lose_their_outputs(finished_run, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(finished_run, workdir, symlinks=True)
    fp32 = workdir / "results/tiny/pretrain/model.pt"
    fp32.write_bytes(fp32.read_bytes()[:20000])   # a copy that stopped; newer than every reader's output
    models = {p: p.read_bytes() for p in (workdir / "results/tiny/policies").rglob("model.pt")}
    proc = snakemake(workdir, check=False)
    assert proc.returncode != 0
    assert "error: results/tiny/pretrain/model.pt is truncated or not a checkpoint" in proc.stdout + proc.stderr
    assert {p: p.read_bytes() for p in models} == models


def test_wall_times_sit_beside_the_outputs_not_inside(finished_run):
    for name in QUANTIZED:
        folder = finished_run / "results/tiny/policies" / name
        assert "seconds" not in (folder / "policy.yaml").read_text()
        assert "seconds" not in (folder / "metrics.json").read_text()
        assert set(json.loads((folder / "policy.timing.json").read_text())) == {"search"}
        assert set(json.loads((folder / "metrics.timing.json").read_text())) == {"evaluate"}
