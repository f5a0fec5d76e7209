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


# --- known layouts of published checkpoints -----------------------------------------------------
def _as_cifar_release(state: dict) -> dict:
    """A zoo CIFAR ResNet state dict under akamaster/pytorch_resnet_cifar10's names: DataParallel
    `module.` prefix, classifier `linear`, option-B shortcut `shortcut`, no num_batches_tracked."""
    renamed = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        key = key.replace(".downsample.", ".shortcut.")
        key = "linear." + key[len("fc."):] if key.startswith("fc.") else key
        renamed[f"module.{key}"] = value
    return renamed


def test_cifar_release_layout_loads_and_is_logged(tmp_path, caplog):
    torch.manual_seed(0)
    source = models.create("resnet20", num_classes=10)
    path = tmp_path / "resnet20-release.th"
    torch.save({"best_prec1": 91.7, "state_dict": _as_cifar_release(source.state_dict())}, path)
    torch.manual_seed(1)
    target = models.create("resnet20", num_classes=10)
    with caplog.at_level("INFO", logger="mpq"):
        import_weights(target, str(path))
    assert _same(source, target)
    assert "weights: layout 'cifar10-resnet-release' (module. stripped, linear -> fc)" in caplog.text


def test_cifar_release_option_b_shortcut_is_renamed():
    torch.manual_seed(0)
    source = models.create("resnet8", num_classes=10, shortcut="B")
    state, layout, done = pretrained.map_onto_zoo(_as_cifar_release(source.state_dict()))
    assert layout.name == "cifar10-resnet-release"
    assert done == "module. stripped, linear -> fc, shortcut -> downsample"
    target = models.create("resnet8", num_classes=10, shortcut="B")
    load_into(target, state)
    assert _same(source, target)


def test_option_a_shortcut_equals_the_release_pad():
    """The release pads `planes // 4` zero channels on each side of x[:, :, ::2, ::2]; parameter-free."""
    from mpq.models.cifar_resnet import ZeroPadShortcut

    x = torch.arange(2 * 4 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4, 4)
    planes = 8
    reference = torch.nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))
    shortcut = ZeroPadShortcut(4, planes, stride=2)
    assert torch.equal(shortcut(x), reference)
    assert not list(shortcut.parameters()) and not list(shortcut.buffers())
    names = models.create("resnet20", num_classes=10).state_dict()
    assert not any("downsample" in k for k in names)   # as the release: no shortcut tensors at all


def test_torchvision_and_compiled_names_are_kept(caplog):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)
    compiled = {f"_orig_mod.{k}": v for k, v in reference.state_dict().items()}
    state, layout, done = pretrained.map_onto_zoo(compiled)
    assert layout.name == "torchvision/timm" and done == "_orig_mod. stripped"
    assert state.keys() == reference.state_dict().keys()
    _, layout, done = pretrained.map_onto_zoo(torchvision.models.mobilenet_v2(weights=None).state_dict())
    assert layout.name == "torchvision/timm" and done == "names kept"


def test_unknown_layout_error_says_how_to_rename():
    torch.manual_seed(0)
    source = models.create("resnet8", num_classes=10).state_dict()
    state = {("head." + k[len("fc."):] if k.startswith("fc.") else k): v for k, v in source.items()}
    mapped, layout, _ = pretrained.map_onto_zoo(state)
    assert layout.name == "unknown"
    with pytest.raises(PretrainedError) as err:
        load_into(models.create("resnet8", num_classes=10), mapped, source="weights w.pth")
    text = _one_line(err)
    assert "missing: fc.bias, fc.weight" in text and "unexpected: head.bias, head.weight" in text
    assert "rename keys so that 'head.bias' becomes 'fc.bias' (the same change in 2 names)" in text
    assert "known layouts: cifar10-resnet-release, torchvision/timm" in text


def test_rename_hints_pair_by_shape_and_suffix():
    """Each unexpected name pairs with the missing name of its shape sharing most dotted parts."""
    own = {"layer1.0.downsample.0.weight": torch.zeros(8, 4, 1, 1), "layer1.0.downsample.1.weight": torch.zeros(8),
           "layer2.0.downsample.1.weight": torch.zeros(16)}
    state = {"layer1.0.skip.0.weight": torch.zeros(8, 4, 1, 1), "layer1.0.skip.1.weight": torch.zeros(8),
             "layer2.0.skip.1.weight": torch.zeros(16), "extra.weight": torch.zeros(3)}
    hints = pretrained.rename_hints(own.keys(), state.keys(), own, state)
    assert hints == ["rename keys so that 'layer1.0.skip.0.weight' becomes 'layer1.0.downsample.0.weight' "
                     "(the same change in 3 names)"]


def test_published_release_file_maps_onto_resnet20(shared_data):
    """The real file: every tensor of the zoo's ResNet-20 is in it, no num_batches_tracked needed."""
    state = pretrained.read_state_dict(str(shared_data / "resnet20-cifar10-published.th"))
    mapped, layout, done = pretrained.map_onto_zoo(state)
    assert layout.name == "cifar10-resnet-release" and done == "module. stripped, linear -> fc"
    own = models.create("resnet20", num_classes=10).state_dict()
    assert set(mapped) == {k for k in own if not k.endswith("num_batches_tracked")}
    load_into(models.create("resnet20", num_classes=10), mapped)


# --- finetuning imported weights (pretrain.weights with pretrain.epochs) ------------------------
DIGITS = {"name": "digits", "image_size": 8}
TRAIN_KEYS = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
              "schedule": "cosine", "warmup_epochs": 0, "min_lr": 0.0, "label_smoothing": 0.0}


def _saved_resnet8(tmp_path):
    torch.manual_seed(0)
    source = models.create("resnet8", num_classes=10)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    return source, str(tmp_path / "w.pth")


@pytest.mark.parametrize("epochs", [0, 1])
def test_start_from_weights_finetunes_only_with_epochs(tmp_path, epochs):
    data = build_data(DIGITS)
    source, path = _saved_resnet8(tmp_path)
    model = models.create("resnet8", num_classes=10)
    cfg = {"weights": path, "epochs": epochs, **TRAIN_KEYS}
    metrics = pretrained.start_from_weights(model, data, cfg, torch.device("cpu"), batch_size=256, seed=0, workers=0)
    assert metrics["epochs"] == epochs and metrics["weights"] == path
    if epochs == 0:
        assert _same(source, model) and metrics["train_loss"] is None
    else:
        assert not torch.equal(source.conv1.weight, model.conv1.weight)
        assert metrics["train_loss"] is not None and 0.0 <= metrics["top1"] <= 100.0


def test_start_from_weights_needs_resolved_epochs(tmp_path):
    _, path = _saved_resnet8(tmp_path)
    with pytest.raises(PretrainedError) as err:
        pretrained.start_from_weights(models.create("resnet8", num_classes=10), build_data(DIGITS),
                                      {"weights": path, "epochs": None, **TRAIN_KEYS}, torch.device("cpu"),
                                      batch_size=256, seed=0, workers=0)
    assert "pretrain.epochs must be an integer >= 0" in _one_line(err)
