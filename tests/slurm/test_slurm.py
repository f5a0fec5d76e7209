"""The cluster profile against a real SLURM (tests/slurm/local-cluster.sh: slurmctld + slurmd on this
machine, 2 fake GPUs, no accounting), the way users of snakemake-executor-plugin-slurm run it:
`snakemake --profile profiles/slurm` plus the small local override `tests/slurm/profile`. Nothing is
mocked: every job goes through sbatch, and SLURM's own records (`scontrol show job`) are checked."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "tests/slurm/local-cluster.sh"
sys.path.insert(0, str(REPO / "tests/integration"))
from tiny_workflow import TINY, write_config  # noqa: E402

pytestmark = pytest.mark.slurm
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: \S+/rule_(\w+?)[/ ]")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install -e '.[slurm]'")
    if shutil.which("bash") is None:
        pytest.skip("slurm: no bash")
    state = Path(os.environ.get("MPQ_SLURM_DIR", "/tmp/mpq-slurm"))
    running = all(_alive(state / f"{d}.pid") for d in ("slurmctld", "slurmd"))
    proc = subprocess.run(["bash", str(CLUSTER), "up"], capture_output=True, text=True, timeout=600)
    if proc.returncode == 3:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stderr
    # One output cache for the module, as a shared path would be on a real cluster: the runs below
    # share the FP32 model (pretrain is cached), so only the first one trains it.
    env = {**os.environ, "SLURM_CONF": str(state / "etc/slurm.conf"),
           "SNAKEMAKE_OUTPUT_CACHE": str(tmp_path_factory.mktemp("snakemake-cache"))}
    yield env
    if not running:   # stop only what this session started
        subprocess.run(["bash", str(CLUSTER), "down"], capture_output=True, timeout=120)


def _alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text()), 0)
        return True
    except (OSError, ValueError):
        return False


def config_for(policies: dict, **extra) -> dict:
    return {**TINY, "policies": {name: TINY["policies"][name] for name in policies}, **extra}


def submit_command(workdir: Path) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--profile", str(REPO / "profiles/slurm"), "--workflow-profile", str(REPO / "tests/slurm/profile")]


def run_on_slurm(cluster, workdir: Path, timeout=1200) -> subprocess.CompletedProcess:
    """Snakemake through SLURM; past `timeout` it is stopped and the test fails with what SLURM and
    Snakemake were doing then (a hang on a CI machine must explain itself)."""
    proc = subprocess.Popen(submit_command(workdir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cluster, cwd=workdir, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        state = cluster_state(cluster)
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"snakemake did not end within {timeout} s\n{state}\n--- snakemake, last lines:\n"
                    + "\n".join((out + err).splitlines()[-60:]))
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def cluster_state(cluster) -> str:
    """The queue, the node and the controller's last log lines, for a failure message."""
    def run(*cmd):
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, env=cluster, timeout=30)
            return done.stdout + done.stderr
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{cmd[0]}: {exc}"
    log = Path(os.environ.get("MPQ_SLURM_DIR", "/tmp/mpq-slurm")) / "log/slurmctld.log"
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:]) if log.exists() else "(no log)"
    return (f"--- squeue --states=all:\n{run('squeue', '--states=all', '-o', '%i %j %T %M %R')}"
            f"--- sinfo -N:\n{run('sinfo', '-N', '-o', '%N %T %C %m %E')}--- slurmctld.log, last lines:\n{tail}")


def job_record(cluster, jobid: str) -> dict:
    """SLURM's record of a job (kept MinJobAge seconds after it ends)."""
    out = subprocess.run(["scontrol", "show", "job", jobid], capture_output=True, text=True, env=cluster).stdout
    return dict(re.findall(r"(\w[\w/:]*)=(\S*)", out))


def test_digits_workflow_runs_to_the_summary_with_every_job_through_sbatch(cluster, tmp_path):
    """Every job goes through sbatch and SLURM ran it; the finetunes, the one rule given a GPU in the
    config (`resources: {finetune: {gpu: 1}}`), are submitted with --gpus=1 and nothing else is."""
    write_config(tmp_path, config_for(["uniform-w4a4", "w3a3-dampen"], resources={"finetune": {"gpu": 1}}))
    proc = run_on_slurm(cluster, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    rows = (tmp_path / "results/tiny/summary.csv").read_text().splitlines()
    assert len(rows) == 1 + 3, rows   # header, fp32, two policies
    submitted = SUBMITTED.findall(out)
    planned = re.findall(r"^rule (\w+):", out, re.M)            # non-local jobs ("localrule all" is local)
    assert len(submitted) == len(planned) >= 10, (submitted, planned)
    assert sorted(rule for _, rule in submitted) == sorted(planned)
    for jobid, rule in submitted:
        record = job_record(cluster, jobid)
        assert record.get("JobState") == "COMPLETED" and record.get("Partition") == "debug", (rule, record)
        gpus = "gres:gpu:1" if rule == "finetune" else "(null)"   # --gpus=1: one GPU for the job
        assert record.get("TresPerJob", "(null)") == gpus, (rule, record)
    assert [rule for _, rule in submitted].count("finetune") == 2


def test_a_requeued_finetune_resumes_and_ends_as_an_uninterrupted_run(cluster, tmp_path):
    """Preemption: SLURM requeues the finetune job after its first epoch is saved; the job starts
    again, resumes after that epoch, and the metrics equal those of a finetune that ran through."""
    recipe = {**TINY["finetune"]["lsq"], "epochs": 3}
    cfg = config_for(["uniform-w4a4"], finetune={"lsq": recipe})
    preempted = tmp_path / "preempted"
    write_config(preempted, cfg)
    proc = subprocess.Popen(submit_command(preempted), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=cluster, cwd=preempted, start_new_session=True)
    resume = preempted / "results/tiny/policies/uniform-w4a4/model.pt.resume"
    deadline = time.monotonic() + 900
    jobid = None
    try:
        while not resume.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the finetune never saved an epoch"
            time.sleep(0.2)
        queue = subprocess.run(["squeue", "-h", "-o", "%i %k"], capture_output=True, text=True, env=cluster).stdout
        jobid = next(line.split()[0] for line in queue.splitlines() if "finetune" in line)
        subprocess.run(["scontrol", "requeue", jobid], check=True, env=cluster, capture_output=True)
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    assert proc.returncode == 0, out[-4000:]
    assert int(job_record(cluster, jobid)["Restarts"]) >= 1, "SLURM did not restart the job"
    log = (preempted / "results/tiny/logs/finetune/uniform-w4a4.log").read_text()
    assert re.search(r"resuming after epoch [12]/3", log), log[-3000:]

    through = tmp_path / "through"   # the same run without the requeue, on this machine
    shutil.copytree(preempted, through, symlinks=True, ignore=shutil.ignore_patterns(".snakemake"))
    for name in ("model.pt", "metrics.json", "model.timing.json", "metrics.timing.json"):
        (through / "results/tiny/policies/uniform-w4a4" / name).unlink(missing_ok=True)
    local = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                            str(through), "--cores", "2", "results/tiny/policies/uniform-w4a4/metrics.json"],
                           capture_output=True, text=True, timeout=900)
    assert local.returncode == 0, local.stderr[-3000:]
    assert "resuming" not in (through / "results/tiny/logs/finetune/uniform-w4a4.log").read_text()
    metrics = [json.loads((d / "results/tiny/policies/uniform-w4a4/metrics.json").read_text())
               for d in (preempted, through)]
    assert metrics[0] == metrics[1]


def test_a_rule_asking_for_more_gpus_than_a_node_has_fails_with_slurms_reason(cluster, tmp_path):
    write_config(tmp_path, config_for(["uniform-w4a4"], resources={"finetune": {"gpu": 3}}))   # the node has 2
    proc = run_on_slurm(cluster, tmp_path, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert re.search(r"finetune[\s\S]*Requested node configuration is not available", out), out[-3000:]
    assert not (tmp_path / "results/tiny/policies/uniform-w4a4/model.pt").exists()
