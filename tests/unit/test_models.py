"""Model zoo: registry, architectures, metadata and registration order."""
import functools

import pytest
import torch
import torchvision
from torch import nn

import mpq.models
from mpq.models.cifar_resnet import ZeroPadShortcut

CIFAR_NAMES = ["resnet8", "resnet20", "resnet32", "resnet56"]
IMAGENET_NAMES = ["resnet18", "resnet50", "mobilenet_v2"]

NUM_CLASSES = 7

# (registry name, shortcut, input size) for every zoo model and variant.
ZOO_VARIANTS = (
    [(name, s, 16) for name in CIFAR_NAMES for s in ("A", "B")]
    + [(name, None, 64) for name in IMAGENET_NAMES]
)


@functools.lru_cache(maxsize=None)
def _shared(name: str, shortcut: str | None = None) -> nn.Module:
    """One instance per variant for tests that only read it (torchvision init is slow)."""
    kwargs = {} if shortcut is None else {"shortcut": shortcut}
    return mpq.models.create(name, NUM_CLASSES, **kwargs).eval()


def _layer_names(model):
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_list_models():
    assert mpq.models.list_models() == sorted(CIFAR_NAMES + IMAGENET_NAMES)


def test_unknown_model_lists_known_names():
    with pytest.raises(ValueError) as error:
        mpq.models.create("resnet9000", 10)
    message = str(error.value)
    assert "\n" not in message and "resnet9000" in message
    assert all(name in message for name in mpq.models.list_models())


def test_register_adds_a_model_and_rejects_duplicates():
    from mpq.models import registry

    @mpq.models.register("tiny_test_model")
    def tiny(num_classes):
        model = nn.Linear(4, num_classes)
        model.signed_inputs = frozenset()
        return model

    try:
        model = mpq.models.create("tiny_test_model", 3)
        assert model.arch == "tiny_test_model" and model.out_features == 3
        with pytest.raises(ValueError, match="already registered"):
            mpq.models.register("tiny_test_model")(tiny)
    finally:
        registry._BUILDERS.pop("tiny_test_model")


def test_bad_num_classes():
    with pytest.raises(ValueError, match="num_classes"):
        mpq.models.create("resnet8", 0)


@pytest.mark.parametrize("name, shortcut, size", ZOO_VARIANTS)
def test_registration_order_equals_execution_order(name, shortcut, size):
    model = _shared(name, shortcut)
    fired, handles = [], []
    for layer_name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            handles.append(module.register_forward_hook(
                lambda m, inputs, output, layer_name=layer_name: fired.append(layer_name)))
    with torch.no_grad():
        logits = model(torch.randn(1, 3, size, size))
    for handle in handles:
        handle.remove()
    assert fired == _layer_names(model)
    assert logits.shape == (1, NUM_CLASSES)
    assert model.arch == name
    assert isinstance(model.signed_inputs, frozenset)


# ----------------------------------------------------------------------------- CIFAR ResNets
@pytest.mark.parametrize(
    "name, blocks", [("resnet8", 1), ("resnet20", 3), ("resnet32", 5), ("resnet56", 9)])
def test_cifar_depth(name, blocks):
    model = mpq.models.create(name, 10)
    assert [len(getattr(model, f"layer{i}")) for i in (1, 2, 3)] == [blocks] * 3
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) + 1 == 6 * blocks + 2  # depth counts the convs and the fc
    assert model.signed_inputs == frozenset()


@pytest.mark.parametrize("size", [8, 15, 16, 32])
def test_cifar_runs_at_small_and_odd_sizes(size):
    for shortcut in ("A", "B"):
        model = mpq.models.create("resnet8", 10, shortcut=shortcut)
        assert model(torch.randn(2, 3, size, size)).shape == (2, 10)


def test_cifar_layout_and_names():
    model = mpq.models.create("resnet20", 100)
    stem = model.conv1
    assert (stem.in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding) == (
        3, 16, (3, 3), (1, 1), (1, 1))
    assert stem.bias is None and isinstance(model.bn1, nn.BatchNorm2d)
    assert [model.layer1[0].conv1.out_channels, model.layer2[0].conv1.out_channels,
            model.layer3[0].conv1.out_channels] == [16, 32, 64]
    assert model.layer2[0].conv1.stride == (2, 2) and model.layer2[1].conv1.stride == (1, 1)
    assert (model.fc.in_features, model.fc.out_features) == (64, 100) and model.fc.bias is not None
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))


def test_shortcut_b_is_a_strided_1x1_conv_with_bn():
    model = mpq.models.create("resnet20", 10, shortcut="B")
    names = _layer_names(model)
    assert "layer2.0.downsample.0" in names and "layer3.0.downsample.0" in names
    assert "layer1.0.downsample.0" not in names
    conv, bn = model.layer2[0].downsample
    assert (conv.kernel_size, conv.stride) == ((1, 1), (2, 2))
    assert (conv.in_channels, conv.out_channels) == (16, 32)
    assert isinstance(bn, nn.BatchNorm2d) and conv.bias is None


def test_shortcut_a_is_parameter_free_subsampling_with_zero_channels():
    model = mpq.models.create("resnet20", 10, shortcut="A")
    shortcut = model.layer2[0].downsample
    assert isinstance(shortcut, ZeroPadShortcut)
    assert not list(shortcut.parameters())
    x = torch.randn(2, 16, 9, 9)
    y = shortcut(x)
    assert y.shape == (2, 32, 5, 5)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert not y[:, :8].any() and not y[:, 24:].any()


def test_invalid_shortcut():
    with pytest.raises(ValueError, match="shortcut"):
        mpq.models.create("resnet8", 10, shortcut="C")


def test_kaiming_init_of_convs():
    torch.manual_seed(0)
    model = mpq.models.create("resnet56", 10)
    weights = torch.cat([b.conv2.weight.flatten() for b in model.layer3])
    expected_std = (2 / (64 * 9)) ** 0.5  # fan_out, ReLU gain
    assert weights.std().item() == pytest.approx(expected_std, rel=0.05)


# -------------------------------------------------------------------------- torchvision models
def test_resnet50_is_v1_5():
    model = _shared("resnet50")
    block = model.layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
    assert model.signed_inputs == frozenset()


def test_mobilenet_v2_signed_inputs():
    model = _shared("mobilenet_v2")
    # Blocks features.2..17 have expansion t=6 and start with the expand 1x1 conv; features.1 has
    # t=1 and no expand conv. features.18.0 is the final 1x1 conv.
    expected = {f"features.{i}.conv.0.0" for i in range(2, 18)} | {"features.18.0"}
    assert len(expected) == 17
    assert model.signed_inputs == frozenset(expected)
    modules = dict(model.named_modules())
    for name in expected:
        assert modules[name].kernel_size == (1, 1) and modules[name].groups == 1
    assert modules["features.1.conv.0.0"].groups == 32  # the t=1 block starts depthwise


def test_torchvision_models_take_num_classes():
    for name, head in [("resnet18", "fc"), ("resnet50", "fc"), ("mobilenet_v2", "classifier.1")]:
        assert _shared(name).get_submodule(head).out_features == NUM_CLASSES


def test_unknown_pretrained_name():
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        mpq.models.create("resnet18", 1000, pretrained="IMAGENET_NOPE")


def test_pretrained_loads_through_torchvision_weights(monkeypatch):
    """Serve the weights from memory so the test never downloads."""
    torch.manual_seed(1)
    published = torchvision.models.mobilenet_v2(num_classes=1000).state_dict()
    requested = []

    def fake_state_dict(weights, *args, **kwargs):
        requested.append(weights)
        return published

    monkeypatch.setattr(torchvision.models.MobileNet_V2_Weights, "get_state_dict", fake_state_dict)
    same_classes = mpq.models.create("mobilenet_v2", 1000, pretrained="IMAGENET1K_V2")
    assert requested == [torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V2]
    assert torch.equal(same_classes.classifier[1].weight, published["classifier.1.weight"])

    transfer = mpq.models.create("mobilenet_v2", 10, pretrained="IMAGENET1K_V2")
    assert torch.equal(transfer.features[0][0].weight, published["features.0.0.weight"])
    assert transfer.classifier[1].out_features == 10
    assert _layer_names(transfer)[-1] == "classifier.1"
