"""Published CIFAR-10 ResNet-20 weights (akamaster/pytorch_resnet_cifar10) through the pretrain stage.

The release names its tensors `module.*` and its classifier `linear`; imported with the names mapped
onto the zoo it scores about 80.7% top-1 on the JPEG test set of ../shared/data (the JPEG copy shifts
the distribution: 91.7% on the original test set). Also checks that the workflow's pretrain spec
carries the resolved `pretrain.epochs` (0 with weights, 30 from scratch).
"""
import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from mpq.config import resolve_spec

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
RELEASE = "resnet20-cifar10-published.th"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cifar10_test_folder(tmp_path_factory):
    """The JPEG test split (10,000 images) and a one-image-per-class train split (unused at 0 epochs:
    the ImageFolder layout needs train/, decoding all 50,000 would only cost time)."""
    if not (SHARED_DATA / "cifar10-jpeg.tar.gz").is_file():
        pytest.skip("../shared/data is absent")
    root = tmp_path_factory.mktemp("cifar10-jpeg")
    with tarfile.open(SHARED_DATA / "cifar10-jpeg.tar.gz") as tar:
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}   # Python >= 3.10.12
        tar.extractall(root, members=[m for m in tar if m.name.startswith("test")], **safe)
    for class_dir in sorted((root / "test").iterdir()):
        (root / "train" / class_dir.name).mkdir(parents=True)
        first = min(class_dir.iterdir())
        shutil.copy(first, root / "train" / class_dir.name / first.name)
    return root


def test_published_resnet20_scores_above_80_percent(cifar10_test_folder, shared_data, tmp_path):
    spec = {"seed": 0, "device": "cpu",
            "dataset": {"name": "cifar10", "root": str(cifar10_test_folder), "image_size": 32, "batch_size": 500,
                        "workers": 0, "loader": "torch"},
            "model": {"arch": "resnet20", "num_classes": 10},
            "pretrain": {"weights": str(shared_data / RELEASE), "epochs": 0}}
    cmd = [sys.executable, str(REPO / "stages/pretrain.py"), "--spec", json.dumps(resolve_spec(spec)), "--threads", "2",
           "--model-out", str(tmp_path / "model.pt"), "--metrics-out", str(tmp_path / "metrics.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "weights: layout 'cifar10-resnet-release' (module. stripped, linear -> fc)" in log
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["epochs"] == 0 and metrics["weights"] == str(shared_data / RELEASE)
    assert metrics["images"] == 10000
    assert metrics["top1"] >= 80.0, metrics


def _dry_run_pretrain_spec(workdir: Path, pretrain: dict) -> dict:
    cfg = {"experiment": "w", "device": "cpu", "dataset": {"name": "digits", "image_size": 16},
           "model": {"arch": "resnet8", "num_classes": 10}, "pretrain": pretrain,
           "policies": {"u": {"search": "uniform", "bits": [4, 4], "finetune": "none"}}}
    (workdir / "config").mkdir(parents=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    if pretrain.get("weights"):   # the config check wants the file to exist (a dry run reads nothing of it)
        (workdir / pretrain["weights"]).write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                           str(workdir), "--cores", "1", "-n", "-p", "results/w/pretrain/metrics.json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    match = re.search(r"\$MPQ_RUN_pretrain --spec '(\{.*?\})'", proc.stdout)
    assert match, proc.stdout[-2000:]
    return json.loads(match.group(1))["pretrain"]


def test_workflow_resolves_unset_epochs(tmp_path):
    with_weights = _dry_run_pretrain_spec(tmp_path / "a", {"weights": "w.pth"})
    assert with_weights["epochs"] == 0 and with_weights["weights"] == "w.pth"
    assert _dry_run_pretrain_spec(tmp_path / "b", {})["epochs"] == 30
    assert _dry_run_pretrain_spec(tmp_path / "c", {"weights": "w.pth", "epochs": 2})["epochs"] == 2


def correct_in_both(model, session, dataset) -> tuple[int, int, int]:
    """(images PyTorch gets right, images onnxruntime gets right, images) over `dataset`."""
    import numpy as np
    import torch

    from mpq.data import make_loader

    torch_correct = onnx_correct = total = 0
    for x, y in make_loader(dataset, 250, train=False):
        with torch.no_grad():
            torch_correct += int((model(x).argmax(1) == y).sum())
        onnx_correct += int((np.argmax(session.run(None, {"input": x.numpy()})[0], 1) == y.numpy()).sum())
        total += len(y)
    return torch_correct, onnx_correct, total


def test_exported_resnet20_runs_in_onnxruntime_with_the_pytorch_top1(cifar10_test_folder, shared_data, tmp_path):
    """The published ResNet-20 at a mixed W2-W8 / A3-A8 policy (calibrated, not trained), exported
    to ONNX (INT4/INT8 initializers) and run by onnxruntime on 2,000 JPEG test images."""
    from dataclasses import replace

    from mpq import models
    from mpq.build import quantize_for_policy
    from mpq.cost import CostModel
    from mpq.data import build_data
    from mpq.data.splits import split_holdout
    from mpq.export import export_model, onnx_session
    from mpq.policy import Policy
    from mpq.stage_common import preprocessing_of
    from mpq.train.loop import evaluate
    from mpq.train.pretrained import import_weights
    from mpq.train.qat import finetune

    data = build_data({"name": "cifar10", "root": str(cifar10_test_folder), "image_size": 32})
    rest, test = split_holdout(data.test, 0.2, seed=0)
    data = replace(data, train=rest, test=test)   # calibrate on test images apart from the 2,000 scored
    model = import_weights(models.create("resnet20", num_classes=10), str(shared_data / RELEASE))
    names = CostModel.from_model(models.create("resnet20", num_classes=10), 32).names
    w_bits = [(2, 3, 4, 5, 6, 8)[i % 6] for i in range(len(names))]
    a_bits = [(3, 4, 8)[i % 3] for i in range(len(names))]
    policy = Policy("resnet20", 10, 32, names, w_bits, a_bits)
    recipe = {"epochs": 0, "bn_recalibration_images": 1024}
    quantize_for_policy(model, policy, {"candidates": [8, 6, 5, 4, 3, 2]}, recipe)
    finetune(model, data, recipe, "cpu", batch_size=128, seed=0, workers=0)
    model.eval()
    export_model(model, policy, tmp_path, onnx=True, preprocessing=preprocessing_of(data))
    session = onnx_session(tmp_path / "model.onnx")
    torch_correct, onnx_correct, total = correct_in_both(model, session, data.test)
    assert total == 2000
    assert torch_correct / total > 0.5   # a working quantized model, not noise
    assert abs(onnx_correct - torch_correct) <= 2, (onnx_correct, torch_correct)   # float rounding at a tie, at most


def test_exported_ptq_resnet20_runs_in_onnxruntime_with_the_pytorch_top1(cifar10_test_folder, shared_data,
                                                                       tmp_path):
    """The published ResNet-20 calibrated by PTQ (BN folded, per-channel affine weights with zero
    points, activation quantizers on the block outputs) at a mixed W3-W8 / A4-A8 policy, written as
    a 'ptq' checkpoint, exported through `mpq export` and run by onnxruntime on 2,000 JPEG test images."""
    from dataclasses import replace

    from mpq import models
    from mpq.cli import main
    from mpq.cost import CostModel
    from mpq.data import build_data
    from mpq.data.splits import split_holdout
    from mpq.export import onnx_session, read_export
    from mpq.policy import Policy
    from mpq.quant.ptq import calibration_set, ptq_quantize, ptq_settings
    from mpq.quant.ptq_model import load_ptq_model, save_ptq_model
    from mpq.stage_common import preprocessing_of
    from mpq.train.pretrained import import_weights

    data = build_data({"name": "cifar10", "root": str(cifar10_test_folder), "image_size": 32})
    rest, test = split_holdout(data.test, 0.2, seed=0)
    data = replace(data, train=rest, test=test)   # calibrate on test images apart from the 2,000 scored
    fp32 = import_weights(models.create("resnet20", num_classes=10), str(shared_data / RELEASE))
    names = CostModel.from_model(models.create("resnet20", num_classes=10), 32).names
    policy = Policy("resnet20", 10, 32, names, [(3, 4, 5, 6, 8)[i % 5] for i in range(len(names))],
                    [(4, 8, 6)[i % 3] for i in range(len(names))])
    recipe = ptq_settings({"calib_images": 256, "iters_w": 40, "iters_a": 20})
    model, _ = ptq_quantize(fp32, policy, calibration_set(data.train, recipe, 0), recipe, seed=0)
    save_ptq_model(tmp_path / "model.pt", model, policy, config={}, recipe=recipe, preprocessing=preprocessing_of(data))
    main(["export", str(tmp_path / "model.pt"), "--out", str(tmp_path / "out"), "--onnx"])   # returns on success
    manifest, _ = read_export(tmp_path / "out")
    assert manifest["scheme"]["name"] == "ptq" and manifest["scheme"]["act_placement"] == "output"
    assert len(manifest["outputs"]) == 1 + 9   # the stem's ReLU and every block
    model, _, _ = load_ptq_model(tmp_path / "model.pt")
    session = onnx_session(tmp_path / "out/model.onnx")
    torch_correct, onnx_correct, total = correct_in_both(model, session, data.test)
    print(f"PTQ ResNet-20 on {total} images: PyTorch {torch_correct}, onnxruntime {onnx_correct} correct")
    assert total == 2000
    assert torch_correct / total > 0.5   # a working quantized model, not noise
    assert abs(onnx_correct - torch_correct) <= 2, (onnx_correct, torch_correct)   # float rounding at a tie, at most
