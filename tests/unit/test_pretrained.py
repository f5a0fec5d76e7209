"""Importing published FP32 weights (pretrain.weights): files, torchvision names, clear errors."""
import urllib.error

import pytest
import torch
import torchvision

from mpq import models
from mpq.data import build_data
from mpq.train import pretrained
from mpq.train.pretrained import PretrainedError, import_and_evaluate, import_weights, load_into


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_state_dict_file_round_trip(tmp_path):
    torch.manual_seed(0)
    source = models.create("resnet8", num_classes=10)
    path = tmp_path / "fp32.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(1)
    target = models.create("resnet8", num_classes=10)
    assert not _same(source, target)
    import_weights(target, str(path))
    assert _same(source, target)


def test_checkpoint_dict_with_ddp_prefix(tmp_path):
    torch.manual_seed(0)
    source = models.create("resnet8", num_classes=10)
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    torch.manual_seed(1)
    target = import_weights(models.create("resnet8", num_classes=10), str(path))
    assert _same(source, target)


def test_class_count_mismatch_is_one_line(tmp_path):
    path = tmp_path / "fp32.pth"
    torch.save(models.create("resnet8", num_classes=10).state_dict(), path)
    with pytest.raises(PretrainedError) as err:
        import_weights(models.create("resnet8", num_classes=3), str(path))
    text = _one_line(err)
    assert "shape mismatch" in text and "num_classes" in text


def test_missing_and_unexpected_keys_are_named():
    model = models.create("resnet8", num_classes=10)
    state = dict(model.state_dict())
    state.pop("conv1.weight")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(PretrainedError) as err:
        load_into(model, state)
    text = _one_line(err)
    assert "missing: conv1.weight" in text and "unexpected: extra.weight" in text


def test_missing_file_and_non_state_dict(tmp_path):
    model = models.create("resnet8", num_classes=10)
    with pytest.raises(PretrainedError) as err:
        import_weights(model, str(tmp_path / "nope.pth"))
    assert "no such file" in _one_line(err) and "ResNet18_Weights.IMAGENET1K_V1" in str(err.value)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(PretrainedError) as err:
        import_weights(model, str(tmp_path / "list.pth"))
    assert "does not hold a state dict" in _one_line(err)


def test_registry_models_use_torchvision_names():
    """A torchvision state dict loads into the zoo model as is (no renaming needed)."""
    for arch, builder in (("resnet18", torchvision.models.resnet18),
                          ("mobilenet_v2", torchvision.models.mobilenet_v2)):
        torch.manual_seed(0)
        reference = builder(weights=None, num_classes=1000)
        zoo = models.create(arch, num_classes=1000)
        load_into(zoo, reference.state_dict(), source=arch)
        assert _same(reference, zoo)


def test_unknown_torchvision_name_is_one_line():
    model = models.create("resnet18", num_classes=1000)
    with pytest.raises(PretrainedError) as err:
        import_weights(model, "ResNet18_Weights.NOPE")
    text = _one_line(err)
    assert "unknown torchvision weights" in text and "ResNet18_Weights.IMAGENET1K_V1" in text
    with pytest.raises(PretrainedError) as err:
        import_weights(model, "ResNet50_Weights.IMAGENET1K_V1")
    assert "another architecture" in _one_line(err)


def test_offline_download_is_one_line(tmp_path, monkeypatch):
    """No network (or a proxy error): one line that says what to do, no traceback spill."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(PretrainedError) as err:
        import_weights(models.create("resnet18", num_classes=1000), "ResNet18_Weights.IMAGENET1K_V1")
    text = _one_line(err)
    assert "cannot fetch torchvision weights ResNet18_Weights.IMAGENET1K_V1" in text
    assert "download.pytorch.org" in text and "set pretrain.weights to its path" in text


def test_torchvision_name_loads_from_the_hub_cache(monkeypatch):
    """With the file fetched (here: faked), a torchvision name fills the zoo model."""
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: reference.state_dict())
    zoo = import_weights(models.create("resnet18", num_classes=1000), "ResNet18_Weights.IMAGENET1K_V1")
    assert _same(reference, zoo)


def test_import_and_evaluate_returns_pretrain_metrics(tmp_path):
    data = build_data({"name": "synthetic", "image_size": 16, "num_classes": 4, "train_size": 8, "test_size": 12})
    torch.manual_seed(0)
    source = models.create("resnet8", num_classes=4)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    model = models.create("resnet8", num_classes=4)
    metrics = import_and_evaluate(model, data, str(tmp_path / "w.pth"), torch.device("cpu"),
                                  batch_size=8, seed=0, workers=0)
    assert metrics["epochs"] == 0 and metrics["weights"] == str(tmp_path / "w.pth")
    assert {"top1", "top5", "loss", "train_loss", "train_acc"} <= set(metrics)
    assert 0.0 <= metrics["top1"] <= 100.0
    assert _same(source, model)


def test_name_detection():
    assert pretrained.is_torchvision_name("MobileNet_V2_Weights.IMAGENET1K_V2")
    assert not pretrained.is_torchvision_name("/data/gluon_resnet50_v1b.pth")
    assert not pretrained.is_torchvision_name("weights/resnet18.pth")
