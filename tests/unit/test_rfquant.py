"""RFQuant supernet: sampling, the bit-width scheduler, IDM, QE, EMA, export, and W6A6 vs FP32."""
import copy
from pathlib import Path
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mpq import models
from mpq.build import quantized_model
from mpq.checkpoint import save_checkpoint
from mpq.data import build_data, make_loader, split_holdout
from mpq.policy import Policy
from mpq.quant import LsqQuantizer, QuantConv2d, set_policy_bits
from mpq.rfquant.bit_scheduler import freeze_ratio, freeze_turbulent, is_event, turbulence
from mpq.rfquant.ema import EmaModel
from mpq.rfquant.losses import AlignPoint, IdmTap, min_bit_layers, qe_term, qe_weight
from mpq.rfquant.subnet import export_subnet, quant_config_for_export
from mpq.rfquant.supernet import (CandidateState, build_supernet, calibrate_bn, init_supernet_act_steps,
                                  layer_candidates, load_supernet, sample_subnet, save_supernet,
                                  subnet_accuracy)
from mpq.rfquant.training import clip_gradients, rfquant_config, supernet_step, train_supernet
from mpq.train import evaluate
from mpq.train.fp32 import pretrain

FULL = [6, 5, 4, 3, 2]


@pytest.fixture(scope="module")
def digits():
    return build_data({"name": "digits", "image_size": 16})


def fresh_supernet(digits, seed=0):
    torch.manual_seed(seed)
    model = models.create("resnet8", num_classes=10)
    state = build_supernet(model, image_size=16, candidates=FULL)
    x, _ = next(iter(make_loader(digits.train, 64, train=True)))
    init_supernet_act_steps(model, state, x)
    return model, state


# --- candidates and sampling ---------------------------------------------------------------------

def test_depthwise_layers_drop_the_two_bit_candidate():
    assert layer_candidates(nn.Conv2d(8, 8, 3, groups=8), FULL) == [6, 5, 4, 3]
    assert layer_candidates(nn.Conv2d(8, 16, 3), FULL) == FULL


def test_sampling_covers_the_current_candidate_sets():
    state = CandidateState(["a", "b", "c"], [FULL, FULL, [6, 5, 4, 3]], [FULL, FULL, [6, 5, 4, 3]])
    state.w[1] = [6, 5, 4, 3]          # frozen: 2 must never be drawn
    state.a[0] = [6, 5]
    gen = torch.Generator().manual_seed(0)
    seen_w, seen_a = [set() for _ in range(3)], [set() for _ in range(3)]
    for _ in range(300):
        w, a = sample_subnet(state, gen)
        for i in range(3):
            seen_w[i].add(w[i])
            seen_a[i].add(a[i])
    assert seen_w == [set(c) for c in state.w]
    assert seen_a == [set(c) for c in state.a]


def test_supernet_has_a_bn_copy_per_pair_and_candidate_lists(digits):
    model, state = fresh_supernet(digits)
    assert state.names == model.mpq_searchable and state.w == [FULL] * 6
    bn = model.get_submodule(model.rfquant_bn_of["layer1.0.conv1"])
    assert len(bn.copies) == 25
    assert not model.get_submodule("layer1.0.conv1").quan_w.grad_scale
    assert all(bool(layer.quan_a.init_state.all()) for layer in
               (model.get_submodule(n) for n in state.names))


# --- bit-width scheduler -------------------------------------------------------------------------

def test_schedule_events_and_ratio_match_the_spec_for_150_epochs():
    events = [e for e in range(150) if is_event(e, 150, {})]
    assert events == list(range(7, 108, 2)) + [119, 134, 149]
    assert freeze_ratio(7, 150, {}) == pytest.approx(0.50, abs=0.005)
    assert freeze_ratio(107, 150, {}) == pytest.approx(0.27, abs=0.005)
    assert freeze_ratio(149, 150, {}) == pytest.approx(0.20, abs=0.005)


def test_freezing_drops_the_lowest_candidate_of_the_top_r_and_restores_the_rest():
    dw = [6, 5, 4, 3]
    state = CandidateState(list("abcde"), [FULL, FULL, FULL, dw, FULL], [FULL, FULL, FULL, dw, FULL])
    chosen = freeze_turbulent(state, [0.1, 0.5, 0.3, 0.4, 0.05], 2)
    assert chosen == [1, 3]
    assert state.w == [FULL, [6, 5, 4, 3], FULL, [6, 5, 4], FULL]
    assert state.a == [FULL, FULL, FULL, dw, FULL]            # default: weight lists only
    # Next event: layer 1 selected again keeps its single dropped bit; layer 3 is restored.
    chosen = freeze_turbulent(state, [0.9, 0.5, 0.0, 0.0, 0.0], 2)
    assert chosen == [0, 1]
    assert state.w == [[6, 5, 4, 3], [6, 5, 4, 3], FULL, dw, FULL]
    freeze_turbulent(state, [0.0, 0.0, 0.0, 0.0, 1.0], 1, targets="wa")
    assert state.w == [FULL, FULL, FULL, dw, [6, 5, 4, 3]]
    assert state.a[4] == [6, 5, 4, 3] and state.a[:4] == state.full_a[:4]


def test_turbulence_counts_weights_near_a_threshold_inside_the_range():
    q = LsqQuantizer([2], "weight", signed=True)
    q.step.data.fill_(1.0)
    # 2-bit signed: [-2, 1]; counted: inside (-1.625, 0.625) and within 0.125 of k + 0.5.
    w = torch.tensor([0.5, -0.45, -1.5, 0.55, 0.0, 0.3, 0.9, -1.9])   # the first 4 count
    assert turbulence(w, q, [2]) == pytest.approx(4 / len(w) / 2)


# --- losses --------------------------------------------------------------------------------------

def reference_forward(model, x):
    """The reference's IDM capture, re-derived by hand on a CIFAR ResNet: a hook keeps every
    searchable layer's BN output tensor without copying it, and each block runs timm's BasicBlock
    forward (in-place ReLU, `x += shortcut`). Returns the stored tensors after the forward, i.e.
    what the reference's MSE then reads."""
    stored, hooks = {}, []
    for layer, bn in model.rfquant_bn_of.items():
        hooks.append(model.get_submodule(bn).register_forward_hook(
            lambda m, i, out, layer=layer: stored.__setitem__(layer, out)))
    x = F.relu(model.bn1(model.conv1(x)), inplace=True)
    for stage in (model.layer1, model.layer2, model.layer3):
        for block in stage:
            shortcut = x
            out = F.relu(block.bn1(block.conv1(x)), inplace=True)
            out = block.bn2(block.conv2(out))
            if block.downsample is not None:
                shortcut = block.downsample(x)
            out += shortcut
            x = F.relu(out, inplace=True)
    for h in hooks:
        h.remove()
    return stored


def option_b_supernet(digits):
    """resnet8 with 1x1-conv shortcuts, so a shortcut BN is searchable too."""
    torch.manual_seed(0)
    model = models.create("resnet8", num_classes=10, shortcut="B")
    state = build_supernet(model, image_size=16, candidates=FULL)
    x, _ = next(iter(make_loader(digits.train, 16, train=True)))
    init_supernet_act_steps(model, state, x)
    model.train()
    return model, state, x


def test_idm_aligns_what_the_reference_aliased_bn_output_holds(digits):
    model, state, x = option_b_supernet(digits)
    tap = IdmTap(model)
    assert tap.points["layer1.0.conv1"] == AlignPoint("layer1.0.relu1")
    assert tap.points["layer1.0.conv2"] == AlignPoint("layer1.0")              # after add and ReLU
    assert tap.points["layer2.0.downsample.0"] == AlignPoint("layer2.0.downsample.1")   # its own output
    set_policy_bits(model, *state.max_subnet())
    tap.record()
    model(x)
    with torch.no_grad():
        want = reference_forward(model, x)
    assert set(tap.targets) == set(want) == set(state.names)
    for layer in state.names:
        assert torch.allclose(tap.targets[layer], want[layer], atol=1e-6), layer
    # The block output after conv2 is not its BN output: an un-aliased BN hook would differ.
    assert tap.targets["layer1.0.conv2"].min() >= 0
    tap.close()


def test_idm_loss_and_its_gradient_equal_the_references(digits):
    model, state, x = option_b_supernet(digits)
    state.w[3] = [6, 5, 4, 3]                      # frozen layer: its minimum is now 3
    tap = IdmTap(model)
    set_policy_bits(model, *state.max_subnet())
    tap.record()
    model(x)
    with torch.no_grad():
        teacher = {k: v.detach().clone() for k, v in reference_forward(model, x).items()}
    w = [2, 6, 4, 3, 2, 5, 2, 3]
    chosen = min_bit_layers(state.names, w, state.w)
    assert chosen == [state.names[i] for i in (0, 3, 4, 6)]
    set_policy_bits(model, w, [4] * len(w))
    weights = [model.get_submodule(n).weight for n in state.names]
    tap.align(chosen)
    model(x)
    ours = tap.loss()
    ours_grad = torch.autograd.grad(ours, weights, allow_unused=True)
    student = reference_forward(model, x)
    theirs = sum(F.mse_loss(student[n], teacher[n]) for n in chosen)
    theirs_grad = torch.autograd.grad(theirs, weights, allow_unused=True)
    assert set(tap.terms) == set(chosen)
    assert float(ours.detach()) == pytest.approx(float(theirs.detach()), rel=1e-5)
    for a, b in zip(ours_grad, theirs_grad):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, atol=1e-7, rtol=1e-4))
    tap.close()


def test_idm_bn_output_option_aligns_the_pre_activation_bn_output(digits):
    model, state, x = option_b_supernet(digits)
    tap = IdmTap(model, "bn_output")
    outputs = {}
    hooks = [model.get_submodule(bn).register_forward_hook(
        lambda m, i, o, n=n: outputs.__setitem__(n, o.detach().clone())) for n, bn in model.rfquant_bn_of.items()]
    set_policy_bits(model, *state.max_subnet())
    tap.record()
    model(x)
    for h in hooks:
        h.remove()
    assert all(torch.equal(tap.targets[n], outputs[n]) for n in state.names)
    assert tap.targets["layer1.0.conv1"].min() < 0                     # before the ReLU
    tap.close()
    with pytest.raises(ValueError, match="idm_target"):
        IdmTap(model, "relu")


def test_qe_term_only_counts_weights_on_the_coarse_grid():
    conv = nn.Conv2d(1, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([0.9, 2.2]).view(2, 1, 1, 1))   # levels 1 and 2 at step 1
    q = LsqQuantizer([3, 2], "weight", signed=True)
    q.step.data.fill_(1.0)
    layer = QuantConv2d(conv, q, None)
    # 3-bit vs min 2: coarse grid = even levels in [-4, 2]; 0.9 -> level 1 (off grid, no term),
    # 2.2 -> level 2 (on grid): (2.2 - 2)^2 summed over out, mean over one (in, kh, kw).
    assert qe_term(layer, 3, 2).item() == pytest.approx(0.2 ** 2, rel=1e-4)
    # At the minimum bit every weight counts: 2-bit range [-2, 1], 2.2 clamps to 1 and quantises to 1.
    assert qe_term(layer, 2, 2).item() == pytest.approx(0.1 ** 2, rel=1e-4)
    assert qe_weight(100, 100, 200) == pytest.approx(0.0)
    assert qe_weight(200, 100, 200) == pytest.approx(0.1)
    assert qe_weight(150, 100, 200) == pytest.approx(0.05)


def test_one_step_accumulates_gradients_that_are_clipped_afterwards(digits):
    model, state = fresh_supernet(digits)
    x, y = next(iter(make_loader(digits.train, 32, train=True)))
    model.train()
    tap = IdmTap(model)
    loss, logits = supernet_step(model, x, y, state, torch.Generator().manual_seed(0),
                                 rfquant_config({"arwd": 0.0}), tap=tap, qe_lambda=0.05)
    tap.close()
    assert torch.isfinite(loss) and logits.shape == (32, 10)
    raw = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert raw and max(g.abs().max() for g in raw) > 1.0, "the step itself leaves the sums unclipped"
    clip_gradients(model, 1.0)        # what the train loop runs after the cross-rank average
    clipped = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.equal(c, r.clamp(-1, 1)) for c, r in zip(clipped, raw))
    with pytest.raises(ValueError, match="unknown key"):
        rfquant_config({"epoch": 3})


def test_ema_averages_floats_and_copies_integers():
    live = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = EmaModel(live, 0.75)
    start = ema.module[0].weight.clone()
    with torch.no_grad():
        live[0].weight.add_(4.0)
        live[1].num_batches_tracked.fill_(7)
    ema.update(live)
    assert torch.allclose(ema.module[0].weight, start + 1.0)
    assert int(ema.module[1].num_batches_tracked) == 7


# --- trained supernet on digits ------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    fp32 = models.create("resnet8", num_classes=10)
    fp32_metrics = pretrain(fp32, digits, {"epochs": 8, "lr": 0.1, "weight_decay": 5e-4}, "cpu",
                            batch_size=128, seed=0, workers=0)
    model = copy.deepcopy(fp32)
    state = build_supernet(model, image_size=16, candidates=FULL)
    train_set, _ = split_holdout(digits.train, 0.1, 0)
    cfg = {"epochs": 2, "lr": 0.01, "warmup_epochs": 0, "q_lr": 1e-3, "ema_decay": 0.8, "qe_start": 0,
           "sched_start": 0, "sched_period": 1}
    ema, metrics = train_supernet(model, state, train_set, cfg, "cpu", batch_size=128, seed=0, workers=0)
    return fp32_metrics, ema, state, metrics, train_set


def test_supernet_at_w6a6_is_close_to_fp32(trained, digits):
    fp32_metrics, ema, state, metrics, train_set = trained
    assert metrics["steps"] == 2 * (len(train_set) // 128) and metrics["scheduler_events"]
    result = subnet_accuracy(copy.deepcopy(ema), [6] * 6, [6] * 6, train_set, digits.test, "cpu",
                             images=2000, batch_size=128, seed=1)
    assert result["top1"] >= fp32_metrics["top1"] - 3.0, (result["top1"], fp32_metrics["top1"])


def test_exported_subnet_matches_the_supernet_and_loads_as_a_quantized_checkpoint(trained, digits, tmp_path):
    _, ema, state, _, train_set = trained
    supernet_path = tmp_path / "supernet.pt"
    save_supernet(supernet_path, ema, state, num_classes=10, holdout={"fraction": 0.1, "seed": 0}, config={})
    supernet, loaded_state, _ = load_supernet(supernet_path)
    assert loaded_state.to_dict() == state.to_dict()
    w, a = [6, 3, 4, 2, 5, 3], [4, 4, 3, 5, 2, 6]
    policy = Policy("resnet8", 10, 16, list(state.names), w, a)
    set_policy_bits(supernet, w, a)
    calibrate_bn(supernet, train_set, "cpu", images=512, batch_size=128, seed=3)
    exported = export_subnet(supernet, policy, {"candidates": FULL, "grad_scale": True})
    x, _ = next(iter(make_loader(digits.test, 64, train=False)))
    supernet.eval()
    exported.eval()
    with torch.no_grad():
        assert torch.allclose(exported(x), supernet(x), atol=1e-5)
    path = tmp_path / "model.pt"
    save_checkpoint(path, state_dict=exported.state_dict(), arch="resnet8", num_classes=10, kind="quantized",
                    config={}, policy=policy.to_dict(), quant=quant_config_for_export({"candidates": FULL}))
    reloaded, reloaded_policy, _ = quantized_model(path)
    assert reloaded_policy.w_bits == w and not reloaded.get_submodule("layer1.0.conv1").quan_w.grad_scale
    loader = make_loader(digits.test, 128, train=False)
    assert evaluate(reloaded, loader, "cpu")["top1"] == pytest.approx(evaluate(exported, loader, "cpu")["top1"])


def test_every_rfquant_and_greedy_key_has_its_default_in_the_schema():
    """The schema is the one place of the defaults (the reference's values): every key of
    importance.rfquant and search.greedy has one there, and the library fills in exactly those."""
    from mpq.config import load_schema
    from mpq.rfquant.greedy_search import greedy_settings

    props = load_schema()["properties"]
    for section, filled in ((props["importance"]["properties"]["rfquant"], rfquant_config({})),
                            (props["search"]["properties"]["greedy"], greedy_settings({}))):
        assert {k: v["default"] for k, v in section["properties"].items()} == filled
    reference = rfquant_config({})
    assert reference["epochs"] == 150 and reference["ema_decay"] == 0.9997 and reference["holdout_fraction"] == 0.0
    assert reference["idm_target"] == "activation" and greedy_settings({})["start_bits"] == 5
