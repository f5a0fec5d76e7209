"""Interrupting a training stage (SIGTERM, as SLURM preemption does) and resuming it."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mpq.config import resolve_spec

REPO = Path(__file__).resolve().parents[2]
SPEC = {"seed": 0, "device": "cpu", "dataset": {"name": "digits", "image_size": 16, "batch_size": 128},
        "model": {"arch": "resnet8", "num_classes": 10},
        "pretrain": {"epochs": 14, "lr": 0.1, "weight_decay": 5e-4}}

pytestmark = pytest.mark.integration


def pretrain_cmd(out: Path, spec=SPEC):
    return [sys.executable, str(REPO / "stages/pretrain.py"), "--spec", json.dumps(resolve_spec(spec)), "--threads", "1",
            "--model-out", str(out / "model.pt"), "--metrics-out", str(out / "metrics.json")]


def test_sigterm_saves_state_and_rerun_resumes_to_the_same_result(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    killed.mkdir()
    clean.mkdir()
    log_path = killed / "log1.txt"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(pretrain_cmd(killed), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while "pretrain epoch 3/14" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()
            assert time.time() < deadline, "pretraining did not reach epoch 3 in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    first = log_path.read_text()
    assert rc == 128 + signal.SIGTERM, first
    assert "interrupted by SIGTERM" in first and "rerun to continue" in first
    assert (killed / "model.pt.resume").is_file()
    assert not (killed / "model.pt").exists() and not (killed / "metrics.json").exists()

    assert (killed / "model.pt.resume.log").is_file()   # the log so far, kept beside the resume file
    log_path.unlink()   # as Snakemake deletes a job's log before running it again
    second_log = killed / "log2.txt"
    with open(second_log, "w") as log:
        second = subprocess.run(pretrain_cmd(killed), stdout=log, stderr=subprocess.STDOUT)
    text = second_log.read_text()
    assert second.returncode == 0, text
    replayed, _, resumed_lines = text.partition("--- end of the interrupted run's log; this run resumes it ---")
    assert "pretrain epoch 1/14" in replayed and "pretrain epoch 2/14" in replayed, "the first epochs stay in the log"
    assert "resuming after epoch" in resumed_lines
    assert "pretrain epoch 1/14" not in resumed_lines, "a resumed run must not start from epoch 1"
    assert not (killed / "model.pt.resume").exists(), "the resume file is dropped after success"
    assert not (killed / "model.pt.resume.log").exists()

    third = subprocess.run(pretrain_cmd(clean), capture_output=True, text=True)
    assert third.returncode == 0, third.stderr
    resumed = json.loads((killed / "metrics.json").read_text())
    uninterrupted = json.loads((clean / "metrics.json").read_text())
    assert resumed == uninterrupted


@pytest.mark.parametrize("content", ["junk", "other-config"])
def test_resume_file_that_does_not_fit_is_ignored(tmp_path, content):
    import torch

    from mpq import models
    from mpq.train import resume

    path = tmp_path / "model.pt.resume"
    if content == "junk":
        path.write_bytes(b"junk")
    else:
        model = models.create("resnet8", num_classes=10)
        resume.ResumeFile(path, "0123456789abcdef").save(epoch=0, model=model,
                                                         optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    short = {**SPEC, "pretrain": {"epochs": 1, "lr": 0.1}}
    done = subprocess.run(pretrain_cmd(tmp_path, short), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    expected = "ignoring unreadable resume file" if content == "junk" else "belongs to another config"
    assert expected in done.stderr
    assert "resuming" not in done.stderr
