"""Model zoo: registry, architectures, metadata and registration order."""
import functools

import pytest
import torch
import torchvision
from torch import nn

import mpq.models
import mpq.quant
from mpq.models.cifar_resnet import ZeroPadShortcut
from mpq.models.rprelu import RPReLU, RPReLUBlock, add_rprelu

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
        registry.unregister("tiny_test_model")


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


# ------------------------------------------------------------------- N2UQ RPReLU structure
def _with_random_bn(model):
    """Non-trivial BN statistics, so pre-activations are negative where a ReLU matters."""
    torch.manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


RESNET_VARIANTS = [("resnet8", "A", 16), ("resnet8", "B", 16), ("resnet18", None, 32),
                   ("resnet50", None, 32)]


@pytest.mark.parametrize("name, shortcut, size", RESNET_VARIANTS)
def test_rprelu_relu_init_equals_the_plain_model(name, shortcut, size):
    """Zero shifts and zero slopes: every RPReLU is a ReLU, and the extra one in front of conv1
    sees a ReLU output, so the converted model computes exactly what the plain one did."""
    kwargs = {} if shortcut is None else {"shortcut": shortcut}
    model = _with_random_bn(mpq.models.create(name, NUM_CLASSES, **kwargs))
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        plain = model(x)
        names = _layer_names(model)
        add_rprelu(model)
        converted = model(x)
    assert torch.equal(converted, plain)
    assert _layer_names(model) == names, "conv/linear names are kept for policies"
    assert not any(isinstance(m, nn.ReLU) for b in model.modules() if isinstance(b, RPReLUBlock)
                   for m in b.modules())


@pytest.mark.parametrize("name, expected", [
    # 3 parameters per channel (shift, slope, shift) for the input of every block conv and the
    # block output. resnet8: blocks (16|16,16,16), (16|16,32,32), (32|32,64,64).
    ("resnet8", 3 * (48 + 80 + 160)),
    # resnet18: per block in + planes + planes; layer1 2x192, layer2 320+384, layer3 640+768,
    # layer4 1280+1536 (the reference's BasicBlock has the same 3 bias/PReLU/bias triples).
    ("resnet18", 3 * (2 * 192 + 704 + 1408 + 2816)),
    # resnet50: per block in + width + width + 4 width: layer1 448+2x640, layer2 1024+3x1280,
    # layer3 2048+5x2560, layer4 4096+2x5120.
    ("resnet50", 3 * (1728 + 4864 + 14848 + 14336)),
])
def test_rprelu_parameter_count(name, expected):
    model = mpq.models.create(name, NUM_CLASSES)
    before = sum(p.numel() for p in model.parameters())
    add_rprelu(model)
    assert sum(p.numel() for p in model.parameters()) - before == expected
    assert sum(p.numel() for m in model.modules() if isinstance(m, RPReLU)
               for p in m.parameters()) == expected


def test_rprelu_block_structure_and_signed_inputs():
    model = add_rprelu(mpq.models.create("resnet8", NUM_CLASSES, shortcut="B"))
    block = model.layer2[0]
    assert isinstance(block, RPReLUBlock)
    assert [block.rprelu1.slope.numel(), block.rprelu2.slope.numel(),
            block.rprelu_out.slope.numel()] == [16, 32, 32]
    assert [n for n, _ in block.named_children()] == [
        "rprelu1", "conv1", "bn1", "rprelu2", "conv2", "bn2", "downsample", "rprelu_out"]
    convs = {f"layer{i}.0.conv{j}" for i in (1, 2, 3) for j in (1, 2)}
    shortcuts = {"layer2.0.downsample.0", "layer3.0.downsample.0"}
    assert model.rprelu_layers == convs | shortcuts
    assert model.signed_inputs == convs | shortcuts | {"fc"}

    resnet50 = add_rprelu(mpq.models.create("resnet50", NUM_CLASSES))
    assert "layer1.0.downsample.0" in resnet50.rprelu_layers
    assert "layer1.0.downsample.0" not in resnet50.signed_inputs, "fed by the stem's ReLU"
    assert "layer2.0.downsample.0" in resnet50.signed_inputs
    assert "layer1.0.conv3" in resnet50.rprelu_layers


def test_rprelu_block_computes_its_documented_function():
    """Reference init (slope 0.25) with shifted biases against a hand-written block."""
    torch.manual_seed(0)
    model = _with_random_bn(mpq.models.create("resnet8", NUM_CLASSES, shortcut="B"))
    add_rprelu(model, init="reference")
    block = model.layer2[0]
    assert torch.all(block.rprelu1.slope == 0.25)
    with torch.no_grad():
        for m in block.modules():
            if isinstance(m, RPReLU):
                m.shift_in.uniform_(-0.3, 0.3)
                m.shift_out.uniform_(-0.3, 0.3)

    def rprelu(m, z):
        z = z + m.shift_in.view(1, -1, 1, 1)
        return torch.where(z > 0, z, m.slope.view(1, -1, 1, 1) * z) + m.shift_out.view(1, -1, 1, 1)

    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        out = block.bn1(block.conv1(rprelu(block.rprelu1, x)))
        out = block.bn2(block.conv2(rprelu(block.rprelu2, out)))
        expected = rprelu(block.rprelu_out, out + block.downsample(x))
        assert torch.allclose(block(x), expected, atol=1e-6)


def test_rprelu_state_dict_rebuilds_in_a_fresh_conversion():
    torch.manual_seed(0)
    trained = add_rprelu(_with_random_bn(mpq.models.create("resnet8", NUM_CLASSES)), init="reference")
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01 * torch.randn_like(p))
    fresh = add_rprelu(mpq.models.create("resnet8", NUM_CLASSES)).eval()
    fresh.load_state_dict(trained.state_dict())          # strict: same keys and shapes
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(fresh(x), trained(x))


def test_rprelu_refuses_mobilenet_and_quantized_models():
    with pytest.raises(ValueError, match="zoo ResNets only.*mobilenet_v2.*rprelu: false"):
        add_rprelu(mpq.models.create("mobilenet_v2", NUM_CLASSES))
    with pytest.raises(ValueError, match="rprelu_init"):
        add_rprelu(mpq.models.create("resnet8", NUM_CLASSES), init="kaiming")
    quantized = mpq.quant.convert_model(mpq.models.create("resnet8", NUM_CLASSES), image_size=16,
                              weight_candidates=[4], act_candidates=[4])
    with pytest.raises(ValueError, match="before quantizing"):
        add_rprelu(quantized)
