"""The pretrain stage under torchrun: 2 processes, gloo on CPU, as the workflow launches it for gpu > 1."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mpq.config import resolve_spec

REPO = Path(__file__).resolve().parents[2]
SPEC = {"seed": 0, "device": "cpu", "dataset": {"name": "digits", "image_size": 16, "batch_size": 128},
        "model": {"arch": "resnet8", "num_classes": 10}, "pretrain": {"epochs": 1, "lr": 0.1}}

pytestmark = pytest.mark.integration


def run_pretrain(out: Path, launcher: list[str]) -> subprocess.CompletedProcess:
    out.mkdir()
    cmd = [*launcher, str(REPO / "stages/pretrain.py"), "--spec", json.dumps(resolve_spec(SPEC)), "--threads", "1",
           "--model-out", str(out / "model.pt"), "--metrics-out", str(out / "metrics.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def test_two_process_ddp_pretrain_matches_single_process_outputs(tmp_path):
    single = run_pretrain(tmp_path / "single", [sys.executable])
    ddp = run_pretrain(tmp_path / "ddp", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                          "--nproc_per_node=2"])
    one = json.loads((tmp_path / "single" / "metrics.json").read_text())
    two = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert sorted(one) == sorted(two)
    assert two["images"] == one["images"], "evaluation counts must be summed over the ranks' shards"
    assert {k: type(v) for k, v in one.items()} == {k: type(v) for k, v in two.items()}
    # Only rank 0 writes: the outputs and nothing else (no temporary files, no resume file left).
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["metrics.json", "model.pt"]
    log = ddp.stderr
    assert "rank 0 of 2 (gloo)" in log
    assert log.count("pretrain epoch 1/1") == 1, "only rank 0 logs progress"
    assert single.stderr.count("pretrain epoch 1/1") == 1

    import torch

    ckpt = torch.load(tmp_path / "ddp" / "model.pt", map_location="cpu", weights_only=True)
    assert ckpt["kind"] == "fp32" and not any(k.startswith("module.") for k in ckpt["state_dict"])
