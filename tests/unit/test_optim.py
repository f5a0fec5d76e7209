"""Learning-rate schedule (timm's values), weight-decay scope and the LSQ grad-scale numel key."""
import math

import pytest
import torch
from torch import nn

from mpq.config import section_defaults
from mpq import models
from mpq.build import quantize_for_policy
from mpq.policy import Policy
from mpq.quant.convert import split_layers
from mpq.train.optim import build_optimizer, lr_factor, param_groups
from mpq.quant.range_init import init_act_steps
from mpq.train.qat import build_finetune_optimizer


# ------------------------------------------------------------------------------ lr schedule
def timm_cosine_lr(epoch, base, epochs, warmup, warmup_lr, min_lr):
    """timm CosineLRScheduler._get_lr with warmup_prefix off and one cycle of t_initial = epochs."""
    if epoch < warmup:
        return warmup_lr + epoch * (base - warmup_lr) / warmup
    if epoch >= epochs:
        return min_lr
    return min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * epoch / epochs))


def test_warm_up_starts_at_warmup_lr_and_follows_timm():
    base, epochs, warmup, start, floor = 0.04, 10, 5, 1e-5, 1e-5
    got = [base * lr_factor(e, epochs, "cosine", warmup, floor / base, warmup_factor=start / base)
           for e in range(epochs + 2)]
    hand = [1e-5, 0.008008, 0.016006, 0.024004, 0.032002, 0.020005]   # epochs 0-5 by hand
    assert got[:6] == pytest.approx(hand, abs=1e-9)
    assert got[9] == pytest.approx(1e-5 + 0.019995 * (1 + math.cos(0.9 * math.pi)), abs=1e-12)
    assert got == pytest.approx([timm_cosine_lr(e, base, epochs, warmup, start, floor)
                                 for e in range(epochs + 2)], abs=1e-12)


def test_without_warm_up_the_cosine_is_unchanged():
    assert [lr_factor(e, 4) for e in range(5)] == pytest.approx(
        [0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(5)])
    assert lr_factor(0, 4, "cosine", 2, 0.1) == pytest.approx(0.1), "no warmup_factor: starts at min"


# ---------------------------------------------------------------------------- weight decay
def _quantized_resnet8(quant_cfg=None, recipe=None, bits=4):
    torch.manual_seed(0)
    model = models.create("resnet8", num_classes=10)
    _, names, _ = split_layers(model)
    policy = Policy("resnet8", 10, 16, names, [bits] * len(names), [bits] * len(names))
    return quantize_for_policy(model, policy, quant_cfg or {}, recipe)


def _decay_of(optimizer):
    groups = [g for o in getattr(optimizer, "optimizers", [optimizer]) for g in o.param_groups]
    return {id(p): g["weight_decay"] for g in groups for p in g["params"]}


@pytest.mark.parametrize("oscillation", ["dampen", "freeze"])
def test_oscillation_recipes_decay_every_weight_parameter(oscillation):
    recipe = {"epochs": 1, "lr": 0.01, "weight_decay": 5e-5, "oscillation": oscillation,
              "quant_optimizer": {"name": "adam", "lr": 1e-5, "weight_decay": 0.0}}
    model = _quantized_resnet8(recipe=recipe, bits=3)
    decay = _decay_of(build_finetune_optimizer(model, section_defaults("finetune.*", recipe)))
    for name, p in model.named_parameters():
        expected = 0.0 if name.endswith(".step") else 5e-5           # BN and biases included
        assert decay[id(p)] == expected, name
    plain = {**recipe, "oscillation": "none"}
    model = _quantized_resnet8(recipe=plain)
    decay = _decay_of(build_finetune_optimizer(model, section_defaults("finetune.*", plain)))
    assert decay[id(model.bn1.weight)] == 0.0 and decay[id(model.layer1[0].conv1.weight)] == 5e-5
    chosen = {**recipe, "weight_decay_scope": "matrices"}
    model = _quantized_resnet8(recipe=chosen, bits=3)
    assert _decay_of(build_finetune_optimizer(model, section_defaults("finetune.*", chosen)))[id(model.bn1.weight)] == 0.0


def test_weight_decay_scope_all_shrinks_bn_weights():
    bn = nn.BatchNorm1d(2)
    holder = nn.Sequential(nn.Linear(2, 2), bn)
    opt = build_optimizer(holder, {"optimizer": "sgd", "lr": 0.5, "weight_decay": 0.1, "momentum": 0.0, "nesterov": False,
                                   "weight_decay_scope": "all"})
    for p in holder.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.allclose(bn.weight, torch.full((2,), 1 - 0.5 * 0.1))
    with pytest.raises(ValueError, match="weight_decay_scope"):
        param_groups(holder, 0.1, scope="everything")


# ------------------------------------------------------------------------- grad_scale_numel
def _step_grads(quant_cfg, x):
    model = _quantized_resnet8(quant_cfg)
    init_act_steps(model, x)
    model.train()
    model(x).square().sum().backward()
    layer = model.layer1[0].conv2
    return layer.quan_w.step.grad.item(), layer.quan_a.step.grad.item(), layer.weight.shape[0]


def test_grad_scale_numel_key_reaches_the_quantizers():
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    w_tensor, a_tensor, _ = _step_grads({}, x)
    w_sample, a_sample, out_channels = _step_grads({"grad_scale_numel": "per_sample"}, x)
    # g = 1 / sqrt(Qp * N): N is the whole tensor, or x[0] (one output channel of a weight,
    # one sample of an activation batch), so the step gradients grow by sqrt(ratio).
    assert w_sample == pytest.approx(w_tensor * math.sqrt(out_channels), rel=1e-4)
    assert a_sample == pytest.approx(a_tensor * math.sqrt(4), rel=1e-4)


def test_linear_schedule_is_n2uq_lambda_stepped_before_each_epoch():
    """N2UQ: LambdaLR(1 - step/E) whose step() runs before each epoch: epoch e uses 1 - (e+1)/E."""
    epochs = 4
    assert [lr_factor(e, epochs, "linear") for e in range(epochs + 1)] == pytest.approx(
        [0.75, 0.5, 0.25, 0.0, 0.0])
    assert lr_factor(3, epochs, "linear", min_factor=0.1) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="linear"):
        lr_factor(0, epochs, "step")


# ------------------------------------------------------------------------------ per-iteration lr
def _lrs_seen(cfg, batches=4, epochs=2):
    """The lr of every optimizer step of train_model on a tiny model, read inside the step."""
    from mpq.train.fp32 import train_model

    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg["lr"])
    data = [(torch.randn(2, 3), torch.tensor([0, 1])) for _ in range(batches)]
    seen = []

    def step(m, x, y):
        seen.append(optimizer.param_groups[0]["lr"])
        loss = nn.functional.cross_entropy(m(x), y)
        loss.backward()
        return loss, m(x)

    train_model(model, lambda e: data, section_defaults("pretrain", {"epochs": epochs, **cfg}), "cpu", what="t", step=step,
                optimizer=optimizer)
    return seen


def test_per_epoch_schedule_holds_the_lr_within_an_epoch():
    seen = _lrs_seen({"lr": 0.1, "schedule": "cosine", "schedule_per": "epoch"})
    assert seen == pytest.approx([0.1] * 4 + [0.05] * 4), "cosine of epoch / epochs, once per epoch"


def test_per_iteration_schedule_samples_the_same_curve_before_every_step():
    """Step i of epoch e runs at the cosine of (e + i / steps) / epochs: a one-epoch run anneals."""
    seen = _lrs_seen({"lr": 0.1, "schedule": "cosine", "schedule_per": "iteration"})
    hand = [0.1 * 0.5 * (1 + math.cos(math.pi * (k / 4) / 2)) for k in range(8)]
    assert seen == pytest.approx(hand)
    one_epoch = _lrs_seen({"lr": 0.1, "schedule": "cosine", "schedule_per": "iteration"}, epochs=1)
    assert one_epoch == pytest.approx([0.1, 0.1 * (1 + math.cos(math.pi / 4)) / 2, 0.05,
                                       0.1 * (1 + math.cos(3 * math.pi / 4)) / 2])


def test_per_iteration_warm_up_and_linear():
    """A fractional warm-up rises linearly per step from warmup_lr; linear falls from the base lr."""
    seen = _lrs_seen({"lr": 0.1, "schedule": "constant", "schedule_per": "iteration", "warmup_epochs": 0.5,
                      "warmup_lr": 0.0}, epochs=1)
    assert seen == pytest.approx([0.0, 0.05, 0.1, 0.1])
    seen = _lrs_seen({"lr": 0.1, "schedule": "linear", "schedule_per": "iteration"}, epochs=1)
    assert seen == pytest.approx([0.1, 0.075, 0.05, 0.025])


def test_schedule_per_is_checked():
    with pytest.raises(ValueError, match="schedule_per 'batch' is unknown; use epoch or iteration"):
        _lrs_seen({"lr": 0.1, "schedule_per": "batch"})
