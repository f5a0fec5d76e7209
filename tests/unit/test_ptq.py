"""PTQ path: BN folding, the affine grid and its MSE init, AdaRound, block reconstruction,
integer checkpoints, and W8A8 accuracy on the embedded digits model (specs/ptq.md)."""
import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mpq import models
from mpq.data import build_data, make_loader
from mpq.data.calibration import calibration_images
from mpq.policy import Policy
from mpq.quant.adaround import annealed_beta, initial_v, rectified_sigmoid, soft_weight
from mpq.quant.affine import AffineActQuantizer, affine_quant, mse_range
from mpq.quant.bn_fold import fold_batchnorm
from mpq.quant.convert import split_layers
from mpq.quant.ptq import ptq_quantize, ptq_settings
from mpq.quant.ptq_layers import PtqConv2d, ptq_layers
from mpq.quant.ptq_model import load_ptq_model, save_ptq_model
from mpq.quant.reconstruction import reconstruct_weights, reconstruction_units
from mpq.train import evaluate, save_checkpoint
from mpq.train.fp32 import pretrain
from test_ompq import run_stage_in_process

FAST = {"iters_w": 100, "iters_a": 40, "lr_w": 0.03, "lr_a": 0.004}


def _policy(model, w, a, fixed=((8, 8), (8, 8))):
    _, names, _ = split_layers(model)
    return Policy("resnet8", 10, 16, names, [w] * len(names), [a] * len(names), fixed_bits=fixed)


# ---------------------------------------------------------------------------------- folding
def test_bn_folding_keeps_the_eval_output():
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10, shortcut="B")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        expected = model.eval()(x)
        folded = fold_batchnorm(copy.deepcopy(model), 16)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        assert torch.allclose(folded(x), expected, atol=1e-4)


# ------------------------------------------------------------------------------ affine grid
def test_affine_grid_holds_zero_and_mse_range_beats_the_full_range():
    torch.manual_seed(0)
    x = torch.randn(8, 50) * torch.linspace(0.1, 2, 8)[:, None]
    delta, zero = mse_range(x, 3, per_channel=True)
    assert delta.shape == zero.shape == (8,)
    q = affine_quant(x, delta[:, None], zero[:, None], 7)
    steps = q / delta[:, None]
    assert torch.allclose(steps, steps.round(), atol=1e-4)
    assert affine_quant(torch.zeros(8, 1), delta[:, None], zero[:, None], 7).abs().max() == 0
    full = (x.amax(1) - x.amin(1)) / 7
    q_full = affine_quant(x, full[:, None], torch.round(-x.amin(1) / full)[:, None], 7)
    err = lambda y: (x - y).abs().pow(2.4).mean(1)   # noqa: E731
    assert (err(q) <= err(q_full) + 1e-7).all()
    _, zero_s = mse_range(x, 4, per_channel=True, grid="signed")
    assert (zero_s == 8).all()


def test_activation_quantizer_inits_on_its_first_input_and_passes_through_when_off():
    q = AffineActQuantizer(4)
    x = torch.rand(2, 3, 5, 5) * 6
    assert q(x) is x                                  # off by default (weight stage)
    q.enabled = True
    y = q(x)
    assert bool(q.initialized) and float(q.zero) == 0 and len(torch.unique(y)) <= 16


# --------------------------------------------------------------------------------- AdaRound
def test_adaround_starts_at_the_float_weight_and_hard_rounds_up_or_down():
    torch.manual_seed(0)
    w = torch.randn(4, 30)
    delta, zero = mse_range(w, 4, per_channel=True)
    delta, zero = delta[:, None], zero[:, None]
    v = initial_v(w, delta)
    inside = (w / delta + zero > 0) & (w / delta + zero < 15)
    assert torch.allclose(soft_weight(w, v, delta, zero, 15)[inside], w[inside], atol=1e-5)
    hard = soft_weight(w, torch.randn_like(w), delta, zero, 15, hard=True) / delta
    base = torch.floor(w / delta)
    assert (((hard - base).round() == 0) | ((hard - base).round() == 1) | ~inside).all()


def test_beta_anneals_from_20_to_2_after_the_warmup():
    assert annealed_beta(0, 1000) is None and annealed_beta(199, 1000) is None
    assert annealed_beta(200, 1000) == pytest.approx(20.0)
    assert annealed_beta(600, 1000) == pytest.approx(11.0)
    assert annealed_beta(1000, 1000) == pytest.approx(2.0)


def test_adaround_rounding_variables_end_nearly_binary():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    w_float = conv.weight.detach().clone()      # the PTQ layer shares (and overwrites) conv.weight
    layer = PtqConv2d(conv, 3, None, quant_input=False).requires_grad_(False)
    x = torch.randn(128, 8, 6, 6)
    # Inputs as a coarsely quantized upstream layer hands them on, targets from the float inputs:
    # with an exact input, nearest rounding is already optimal for white noise and there is
    # nothing for AdaRound to compensate.
    x_in = torch.round(x * 2) / 2
    with torch.no_grad():
        target = F.conv2d(x, w_float, conv.bias, padding=1)
    stats = reconstruct_weights(layer, x_in, target, iters=800, batch_size=32, lr=0.03, round_lambda=0.01,
                                warmup=0.2, beta_range=(20.0, 2.0), generator=torch.Generator().manual_seed(0))
    assert stats["undecided_rounding"] < 0.01
    assert layer.rounding is None
    with torch.no_grad():
        k = layer.weight / layer.w_delta
        assert torch.allclose(k, k.round(), atol=1e-4)             # weights now sit on the grid
        nearest = affine_quant(w_float, layer.w_delta, layer.w_zero, 7)
        assert not torch.equal(layer.weight, nearest)                 # some roundings were flipped
        adaround_err = (layer(x_in) - target).pow(2).mean()
        nearest_err = (F.conv2d(x_in, nearest, conv.bias, padding=1) - target).pow(2).mean()
        assert adaround_err < 0.995 * nearest_err


def test_rectified_sigmoid_reaches_both_ends():
    h = rectified_sigmoid(torch.tensor([-10.0, 0.0, 10.0]))
    assert h.tolist() == pytest.approx([0.0, 0.5, 1.0])


# ------------------------------------------------------------------------------ structure
def test_reconstruction_units_are_blocks_and_loose_layers_without_the_stem():
    assert reconstruction_units(models.create("resnet8", num_classes=10)) == ["layer1.0", "layer2.0", "layer3.0",
                                                                               "fc"]
    mobile = reconstruction_units(models.create("mobilenet_v2", num_classes=10))
    assert mobile[0] == "features.1" and mobile[-2:] == ["features.18", "classifier.1"] and len(mobile) == 19


def test_settings_reject_unknown_keys():
    assert ptq_settings({"method": "ptq", "iters_w": 5})["iters_w"] == 5
    with pytest.raises(ValueError, match="unknown ptq setting"):
        ptq_settings({"iter_w": 5})


# -------------------------------------------------------------------------- digits model
@pytest.fixture(scope="module")
def digits_fp32():
    torch.manual_seed(0)
    data = build_data({"name": "digits", "image_size": 16})
    model = models.create("resnet8", num_classes=10)
    fp32 = pretrain(model, data, {"epochs": 8, "lr": 0.1, "weight_decay": 5e-4, "schedule": "cosine"}, "cpu",
                    batch_size=128, seed=0, workers=0)
    return model.eval(), data, fp32["top1"]


@pytest.fixture(scope="module")
def w8a8(digits_fp32):
    model, data, _ = digits_fp32
    images = calibration_images(data.train, ptq_settings({})["calib_images"], 0)   # the default 1,024
    quantized, metrics = ptq_quantize(model, _policy(model, 8, 8), images, FAST, seed=0)
    return quantized, metrics, images


def test_ptq_w8a8_is_within_one_point_of_fp32(digits_fp32, w8a8):
    model, data, fp32_top1 = digits_fp32
    quantized, metrics, images = w8a8
    assert len(images) == 1024 and metrics["calib_images"] == 1024
    top1 = evaluate(quantized, make_loader(data.test, 256, train=False), "cpu")["top1"]
    assert fp32_top1 > 90 and top1 >= fp32_top1 - 1.0
    assert all(isinstance(m, nn.Identity) or not isinstance(m, nn.BatchNorm2d) for m in quantized.modules())


def test_ptq_follows_the_policy_bits(digits_fp32, w8a8):
    model, _, _ = digits_fp32
    _, _, images = w8a8
    policy = _policy(model, 3, 4, fixed=((4, 8), (2, 8)))
    policy.w_bits[1] = 5
    quantized, _ = ptq_quantize(model, policy, images[:64], {"iters_w": 2, "iters_a": 2}, seed=0)
    layers = dict(ptq_layers(quantized))
    assert layers["conv1"].w_bits == 4 and layers["conv1"].quan_a is None       # image stays float
    assert (layers["fc"].w_bits, layers["fc"].quan_a.bits) == (2, 8)
    assert layers[policy.names[1]].w_bits == 5 and layers[policy.names[0]].quan_a.bits == 4
    assert len(torch.unique(layers[policy.names[0]].integer_weight())) <= 8


def test_checkpoint_holds_integer_weights_and_reloads_the_same_model(digits_fp32, w8a8, tmp_path):
    model, _, _ = digits_fp32
    quantized, metrics, images = w8a8
    policy = _policy(model, 8, 8)
    path = tmp_path / "model.pt"
    save_ptq_model(path, quantized, policy, config={}, metrics=metrics, recipe=FAST)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert state["layer1.0.conv1.w_int"].dtype == torch.uint8 and "layer1.0.conv1.weight" not in state
    loaded, loaded_policy, ckpt = load_ptq_model(path)
    assert ckpt["kind"] == "ptq" and loaded_policy.w_bits == policy.w_bits
    with torch.no_grad():
        assert torch.allclose(loaded(images[:32]), quantized(images[:32]), atol=1e-5)


def test_ptq_stage_writes_a_loadable_checkpoint(digits_fp32, tmp_path):
    model, _, _ = digits_fp32
    save_checkpoint(tmp_path / "fp32.pt", state_dict=model.state_dict(), arch="resnet8", num_classes=10,
                    kind="fp32", config={})
    _policy(model, 4, 4).save(tmp_path / "policy.yaml")
    spec = {"seed": 0, "device": "cpu", "dataset": {"name": "digits", "image_size": 16, "batch_size": 64},
            "model": {"arch": "resnet8", "num_classes": 10}, "recipe_name": "ptq",
            "recipe": {"method": "ptq", "calib_images": 128, "iters_w": 5, "iters_a": 5}}
    run_stage_in_process("ptq", "--spec", json.dumps(spec), "--threads", "1", "--policy",
                         str(tmp_path / "policy.yaml"), "--fp32", str(tmp_path / "fp32.pt"),
                         "--out", str(tmp_path / "model.pt"))
    loaded, policy, ckpt = load_ptq_model(tmp_path / "model.pt")
    assert policy.w_bits == [4] * 6 and ckpt["metrics"]["calib_images"] == 128
