"""PTQ path: BN folding, the affine grid and its MSE init, AdaRound, block reconstruction,
BRECQ's activation placement, calibration data, fp32 codes under bf16 autocast, integer
checkpoints, and W8A8 accuracy on the embedded digits model (docs/methods/ptq.md)."""
import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mpq import models
from mpq.checkpoint import save_checkpoint
from mpq.config import resolve_spec
from mpq.data import build_data, make_loader
from mpq.data.calibration import calibration_images
from mpq.policy import Policy
from mpq.quant.adaround import annealed_beta, initial_v, rectified_sigmoid, rounding_codes, soft_weight
from mpq.quant.affine import affine_codes, affine_quant
from mpq.quant.bn_fold import fold_batchnorm
from mpq.quant.convert import split_layers
from mpq.quant.ptq import calibration_set, prepare_ptq_model, ptq_quantize, ptq_settings
from mpq.quant.ptq_layers import (AffineActQuantizer, PtqConv2d, act_quantizer_bits, act_quantizers, ptq_layers,
                                  set_act_quant)
from mpq.quant.ptq_model import load_ptq_model, save_ptq_model
from mpq.quant.range_init import mse_range
from mpq.quant.reconstruction import capture, reconstruct_acts, reconstruct_weights, reconstruction_units
from mpq.train import evaluate
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
    images = calibration_set(data.train, ptq_settings({}), 0)   # the defaults: 1,024 augmented training crops
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
    quantized, _ = ptq_quantize(model, policy, images[:64], {"iters_w": 2, "iters_a": 2, "act_placement": "input"},
                                seed=0)
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
    run_stage_in_process("ptq", "--spec", json.dumps(resolve_spec(spec)), "--threads", "1", "--policy",
                         str(tmp_path / "policy.yaml"), "--fp32", str(tmp_path / "fp32.pt"),
                         "--out", str(tmp_path / "model.pt"))
    loaded, policy, ckpt = load_ptq_model(tmp_path / "model.pt")
    assert policy.w_bits == [4] * 6 and ckpt["metrics"]["calib_images"] == 128


# ------------------------------------------------------------------ BRECQ activation placement
def _resnet20(shortcut="B"):
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10, shortcut=shortcut)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def _resnet20_policy(model, a_bits=None, fixed=((8, 8), (8, 8))):
    _, names, _ = split_layers(model)
    a_bits = [a_bits.get(n, 4) for n in names] if a_bits else [4] * len(names)
    return Policy("resnet20", 10, 16, names, [4] * len(names), a_bits, fixed_bits=fixed)


def _act_bits(model):
    return {name: q.bits for name, q in act_quantizers(model)}


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_brecq_placement_on_resnet20_w4a4(shortcut):
    """BRECQ (quant_block.py, quant_model.py): the stem's conv-ReLU output at 8 bits, one quantiser
    after each block's add + ReLU, one after conv1's ReLU inside each block (conv2's input); none
    on conv2's or the downsample's output, so none on a block's first conv, downsample or fc input."""
    model = _resnet20(shortcut)
    prepare_ptq_model(model, _resnet20_policy(model))
    expected = {"relu.act_out": 8}
    for stage in (1, 2, 3):
        for i in range(3):
            expected[f"layer{stage}.{i}.conv2.quan_a"] = 4
            expected[f"layer{stage}.{i}.act_out"] = 4
    assert _act_bits(model) == expected
    layers = dict(ptq_layers(model))
    assert layers["layer2.0.conv1"].quan_a is None and layers["fc"].quan_a is None
    assert (shortcut == "B") == ("layer2.0.downsample.0" in layers)
    if shortcut == "B":
        assert layers["layer2.0.downsample.0"].quan_a is None


def test_output_placement_maps_mixed_input_bits_onto_output_quantizers():
    model = _resnet20()
    a_bits = {"layer1.0.conv1": 2, "layer1.0.conv2": 5, "layer2.0.conv1": 6, "layer2.0.downsample.0": 3,
              "layer3.0.conv1": 3, "layer3.0.downsample.0": 7, "layer3.2.conv2": 7}
    policy = _resnet20_policy(model, a_bits, fixed=((8, 6), (8, 8)))
    inputs, outputs = act_quantizer_bits(prepare_ptq_model(copy.deepcopy(model), policy, act_placement="input"), policy,
                                         "input")
    assert not outputs and inputs["fc"] == 8 and inputs["layer2.0.downsample.0"] == 3
    prepare_ptq_model(model, policy)
    bits = _act_bits(model)
    assert bits["relu.act_out"] == 6                 # the stem's fixed a-bits, not layer1.0.conv1's 2
    assert bits["layer1.0.conv2.quan_a"] == 5         # inside a block: the layer's own input bits
    assert bits["layer1.2.act_out"] == 6              # consumers layer2.0.conv1 (6) and downsample (3): max
    assert bits["layer2.2.act_out"] == 7              # consumers 3 and 7
    assert bits["layer3.2.act_out"] == 7              # feeds fc only: the block's own bits (its conv2's)
    assert bits["layer1.0.act_out"] == 4


def test_output_placement_quantizes_block_outputs_and_calibrates():
    model = _resnet20()
    images = torch.randn(16, 3, 16, 16)
    quantized, metrics = ptq_quantize(model, _resnet20_policy(model), images,
                                      {"iters_w": 2, "iters_a": 3, "act_init_images": 16, "batch_size": 8}, seed=0)
    assert metrics["settings"]["act_placement"] == "output"
    quantizers = dict(act_quantizers(quantized))
    assert all(bool(q.initialized) and q.enabled for q in quantizers.values())
    seen = {}
    hooks = [quantized.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: seen.setdefault(n, o))
             for n in ("relu", "layer1.0", "layer3.2")]
    hooks.append(quantized.fc.register_forward_pre_hook(lambda m, i: seen.setdefault("fc_in", i[0])))
    with torch.no_grad():
        logits = quantized(images)
    for h in hooks:
        h.remove()
    assert torch.isfinite(logits).all()
    for name, qmax in (("relu", 255), ("layer1.0", 15), ("layer3.2", 15)):
        q = quantizers[f"{name}.act_out"]
        codes = seen[name] / q.delta + q.zero
        assert torch.allclose(codes, codes.round(), atol=1e-3) and codes.min() >= -1e-3 and codes.max() <= qmax + 1e-3
    pooled = seen["layer3.2"].mean((2, 3))            # fc reads the pooled 4-bit block output as is
    assert torch.allclose(seen["fc_in"], pooled)


def test_activation_reconstruction_learns_the_block_output_step():
    model = _resnet20()
    reference = fold_batchnorm(copy.deepcopy(model), 16)
    quantized = prepare_ptq_model(model, _resnet20_policy(model))
    images = torch.randn(16, 3, 16, 16)
    set_act_quant(quantized, True)
    with torch.no_grad():
        quantized(images)
    inputs, targets = capture(reference, "layer1.0", images, 16)
    before = float(quantized.layer1[0].act_out.delta)
    reconstruct_acts(quantized.layer1[0], inputs, targets, iters=5, batch_size=8, lr=0.01, p=2.4,
                     generator=torch.Generator().manual_seed(0))
    assert float(quantized.layer1[0].act_out.delta) != before


def test_checkpoint_without_a_placement_reloads_with_input_quantizers(tmp_path):
    model = _resnet20("A")     # the zoo's resnet20, as load_ptq_model rebuilds it
    policy = _resnet20_policy(model)
    images = torch.randn(8, 3, 16, 16)
    recipe = {"iters_w": 1, "iters_a": 1, "act_init_images": 8, "act_placement": "input"}
    quantized, _ = ptq_quantize(model, policy, images, recipe, seed=0)
    legacy = {k: v for k, v in ptq_settings(recipe).items() if k != "act_placement"}
    save_checkpoint(tmp_path / "old.pt", state_dict=quantized.state_dict(), arch="resnet20", num_classes=10,
                    kind="ptq", config={}, policy=policy.to_dict(), ptq=legacy)
    loaded, _, _ = load_ptq_model(tmp_path / "old.pt")
    assert dict(ptq_layers(loaded))["layer1.0.conv1"].quan_a.bits == 4
    with torch.no_grad():
        assert torch.allclose(loaded(images), quantized(images), atol=1e-5)


def test_unknown_placement_and_calibration_transform_are_rejected():
    with pytest.raises(ValueError, match="act_placement"):
        ptq_settings({"act_placement": "outputs"})
    with pytest.raises(ValueError, match="calib_transform"):
        ptq_settings({"calib_transform": "test"})


# ------------------------------------------------------------------------ calibration images
def test_calibration_uses_augmented_training_crops_fixed_by_the_seed():
    data = build_data({"name": "digits", "image_size": 16})
    train = calibration_set(data.train, ptq_settings({"calib_images": 32}), seed=3)
    assert torch.equal(train, calibration_set(data.train, ptq_settings({"calib_images": 32}), seed=3))
    assert torch.equal(train, calibration_images(data.train, 32, 3, augment=True))
    plain = calibration_set(data.train, ptq_settings({"calib_images": 32, "calib_transform": "eval"}), seed=3)
    assert torch.equal(plain, calibration_images(data.train, 32, 3, augment=False))
    assert not torch.equal(train, plain)


# ------------------------------------------------------------------- fp32 codes under autocast
def _autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


@pytest.mark.parametrize("bits", range(2, 9))
def test_ptq_quantizer_codes_under_bf16_autocast_equal_fp32(bits):
    torch.manual_seed(bits)
    qmax = 2 ** bits - 1
    # activation: a bf16 tensor, as a conv under autocast hands it on
    x = (torch.rand(4096) * 5 - 0.5).to(torch.bfloat16)
    act = AffineActQuantizer(bits)
    act.enabled = True
    act.init_range(x.float())
    with _autocast():
        codes_bf16, out_bf16 = affine_codes(x, act.delta, act.zero, qmax), act(x)
    assert torch.equal(codes_bf16, affine_codes(x.float(), act.delta, act.zero, qmax))
    assert out_bf16.dtype == torch.bfloat16 and torch.equal(out_bf16, act(x.float()).to(torch.bfloat16))
    # weights: per-channel affine grid and AdaRound (soft and hard), fp32 and bf16 weights
    layer = PtqConv2d(nn.Conv2d(4, 6, 3), bits, bits).requires_grad_(False)
    v = layer.start_rounding().detach()
    for w in (layer.weight, layer.weight.to(torch.bfloat16)):
        expected = [affine_codes(w.float(), layer.w_delta, layer.w_zero, qmax),
                    rounding_codes(w.float(), v, layer.w_delta, layer.w_zero, qmax),
                    rounding_codes(w.float(), v, layer.w_delta, layer.w_zero, qmax, hard=True)]
        with _autocast():
            got = [affine_codes(w, layer.w_delta, layer.w_zero, qmax),
                   rounding_codes(w, v, layer.w_delta, layer.w_zero, qmax),
                   rounding_codes(w, v, layer.w_delta, layer.w_zero, qmax, hard=True)]
        assert all(torch.equal(a, b) for a, b in zip(got, expected))
    hard_fp32 = rounding_codes(layer.weight, v, layer.w_delta, layer.w_zero, qmax, hard=True)
    soft_fp32 = soft_weight(layer.weight, v, layer.w_delta, layer.w_zero, qmax)
    with _autocast():
        assert torch.equal(layer.weight_codes(), hard_fp32) and torch.equal(layer.quantized_weight(), soft_fp32)


def test_a_schema_filled_ptq_recipe_carries_only_known_or_ignored_keys():
    """The schema fills every finetune recipe with the QAT defaults (label_smoothing, schedule_per,
    range_init, ...); ptq_settings must take such a recipe and still refuse a typo."""
    from pathlib import Path

    import yaml

    from mpq.config import validate_config

    repo = Path(__file__).resolve().parents[2]
    schema = yaml.safe_load((repo / "workflow/schemas/config.schema.yaml").read_text())
    config = yaml.safe_load((repo / "config/config.yaml").read_text())
    recipe = validate_config(config, schema)["finetune"]["ptq"]
    assert {"schedule_per", "range_init", "label_smoothing"} <= set(recipe)
    settings = ptq_settings(recipe)
    assert settings["calib_images"] == recipe["calib_images"]
    with pytest.raises(ValueError, match="unknown ptq setting"):
        ptq_settings({**recipe, "iters_ww": 3})
