"""Budget sweeps in the workflow: the tiny config's `rfquant-front` (bitops: [w3a3, w5a5], no
retraining) is one rfquant_front job; its points are ordinary policies with their own files and rows."""
import csv
import json
import shutil

import pytest
import yaml

from tiny_workflow import FRONT_POINTS, planned_jobs, snakemake, write_config

pytestmark = pytest.mark.integration
FRONT_RULE = "rfquant_front_rfquant_front"


def edited_copy(finished_run, where, edit):
    shutil.copytree(finished_run, where, symlinks=True)
    cfg = yaml.safe_load((where / "config/config.yaml").read_text())
    edit(cfg["policies"])
    write_config(where, cfg)
    return where


def test_a_sweep_is_one_job_with_a_row_and_files_per_point(finished_run):
    res = finished_run / "results/tiny"
    rows = {r["policy"]: r for r in csv.DictReader(open(res / "summary.csv"))}
    low, high = (rows[name] for name in FRONT_POINTS)
    assert low["front"] == high["front"] == "rfquant-front" and rows["rfquant-w4a4"]["front"] == ""
    assert low["budget"] == "bitops=w3a3" and float(low["bitops_g"]) < float(high["bitops_g"])
    for name in FRONT_POINTS:
        folder = res / "policies" / name
        policy = yaml.safe_load((folder / "policy.yaml").read_text())
        assert policy["achieved"]["bitops_g"] <= policy["budget"]["bitops_g"] + 1e-9
        assert policy["search"]["front"]["limits"] == 2
        assert (folder / "bits.png").read_bytes()[:4] == b"\x89PNG" and (folder / "model.pt").is_file()
        assert (folder / "bits.svg").stat().st_size > 2000
        assert float(rows[name]["time_search_s"]) >= 0 and float(rows[name]["time_evaluate_s"]) > 0
    log = (res / "logs/rfquant_front/rfquant-front.log").read_text()
    assert "front point 2/2" in log
    assert not (res / "logs/search/rfquant-front-w3a3.log").exists()
    assert not (res / "logs/plot_policy/rfquant-front-w3a3.log").exists()


def test_adding_a_point_reruns_that_front_job_and_nothing_else(finished_run, tmp_path):
    workdir = edited_copy(finished_run, tmp_path / "copy",
                          lambda p: p["rfquant-front"]["budget"].update(bitops=["w3a3", "w4a4", "w5a5"]))
    jobs = planned_jobs(workdir)
    assert jobs == {FRONT_RULE: 1, "summarize": 1, "all": 1}, jobs   # the job draws its points' charts too


def test_the_front_jobs_points_equal_their_own_three_jobs(finished_run, tmp_path):
    """With front_job: false each point is searched, cut out and evaluated by its own jobs. The
    largest budget is searched first in the front job too, so that point is the same policy with
    the same metrics; the next is searched from scratch instead of from the first's bits. A value
    added to such a sweep then adds its own three jobs only."""
    workdir = edited_copy(finished_run, tmp_path / "copy", lambda p: p["rfquant-front"].update(front_job=False))
    jobs = planned_jobs(workdir)
    assert jobs == {"search": 2, "subnet": 2, "evaluate": 2, "plot_policy": 2, "summarize": 1, "all": 1}, jobs
    snakemake(workdir)
    high = [json.loads((d / "results/tiny/policies/rfquant-front-w5a5/metrics.json").read_text())
            for d in (finished_run, workdir)]
    assert high[0] == high[1]
    low = yaml.safe_load((workdir / "results/tiny/policies/rfquant-front-w3a3/policy.yaml").read_text())
    assert "front" not in low["search"] and low["achieved"]["bitops_g"] <= low["budget"]["bitops_g"] + 1e-9

    cfg = yaml.safe_load((workdir / "config/config.yaml").read_text())
    cfg["policies"]["rfquant-front"]["budget"]["bitops"] = ["w3a3", "w4a4", "w5a5"]
    write_config(workdir, cfg)
    plan = snakemake(workdir, "-n").stdout
    assert planned_jobs(workdir) == {"search": 1, "subnet": 1, "evaluate": 1, "plot_policy": 1, "summarize": 1,
                                     "all": 1}
    assert "rfquant-front-w4a4" in plan and "policies/rfquant-front-w5a5/policy.yaml" not in plan


def test_an_accuracy_target_bisects_the_greedy_path_on_a_validation_split(finished_run, tmp_path):
    """budget: {accuracy_drop: X}: the search reads the FP32 model, evaluates a few points of the
    greedy path on held-out training images and keeps the cheapest one within X of FP32's top-1
    there; its own subnet and evaluate jobs then measure it on the test split."""
    target = {"search": "greedy", "importance": "rfquant", "budget": {"accuracy_drop": 2.0}, "finetune": "none"}
    workdir = edited_copy(finished_run, tmp_path / "copy", lambda p: p.update({"rf-2pt": target}))
    assert planned_jobs(workdir) == {"search": 1, "subnet": 1, "evaluate": 1, "plot_policy": 1, "summarize": 1,
                                     "all": 1}
    snakemake(workdir)
    policy = yaml.safe_load((workdir / "results/tiny/policies/rf-2pt/policy.yaml").read_text())
    record = policy["search"]["accuracy_target"]
    assert record["drop"] == 2.0 and "training images" in record["validation"]
    evaluations, chosen = record["evaluations"], record["chosen"]
    assert 2 <= len(evaluations) <= 2 + (len(record["path"]) - 2).bit_length()
    for e in evaluations:   # every point up to the chosen one evaluated within, every later one not
        assert e["within"] == (e["path_index"] <= chosen)
        assert e["within"] == (record["fp32_val_top1"] - e["val_top1"] <= 2.0)
    assert any(e["path_index"] == chosen for e in evaluations)
    chosen_cost = next(e["bitops_g"] for e in evaluations if e["path_index"] == chosen)
    assert policy["achieved"]["bitops_g"] == chosen_cost
    assert policy["budget"]["requested"] == {"accuracy_drop": 2.0}
    rows = {r["policy"]: r for r in csv.DictReader(open(workdir / "results/tiny/summary.csv"))}
    assert rows["rf-2pt"]["budget"] == "accuracy_drop=2.0" and float(rows["rf-2pt"]["top1"]) > 0
