"""LSQ values and gradients against the formulas of docs/methods/lsq.md, and conversion."""
import math

import pytest
import torch
from torch import nn

from mpq.quant import (LsqQuantizer, QuantConv2d, QuantLinear, SwitchableBatchNorm2d, convert_model,
                       int_range, searchable_layers, set_policy_bits, set_uniform_bits)


def test_int_ranges():
    assert int_range(4, signed=False) == (0, 15)
    assert int_range(4, signed=True) == (-8, 7)
    assert int_range(4, signed=True, symmetric=True) == (-7, 7)
    assert int_range(2, signed=True) == (-2, 1)
    with pytest.raises(ValueError, match="not supported"):
        int_range(1, signed=True)


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_forward_matches_formula(signed, bits):
    torch.manual_seed(bits)
    q = LsqQuantizer([bits], "act", signed=signed, grad_scale=False)
    q.step.data.fill_(0.17)
    q.init_state.fill_(1)
    x = torch.randn(1000) * 2
    if not signed:
        x = x.abs()
    qn, qp = int_range(bits, signed)
    expected = torch.clamp(x / 0.17, qn, qp).round() * 0.17
    assert torch.allclose(q(x), expected)
    levels = torch.unique(torch.round(q(x) / 0.17)).tolist()
    assert min(levels) >= qn and max(levels) <= qp


def test_gradients_match_closed_form():
    """d/dx = 1 inside, 0 outside; d/ds = round(u)-u inside, Qn below, Qp above."""
    q = LsqQuantizer([3], "act", signed=True, grad_scale=False)
    s = 0.5
    q.step.data.fill_(s)
    q.init_state.fill_(1)
    x = torch.linspace(-6, 6, 241, dtype=torch.float32).requires_grad_(True)
    q(x).sum().backward()
    qn, qp = int_range(3, True)
    u = x.detach() / s
    inside = (u > qn) & (u < qp)
    assert torch.equal(x.grad, inside.float())
    ds = torch.where(inside, u.round() - u, torch.where(u <= qn, torch.tensor(float(qn)), torch.tensor(float(qp))))
    assert q.step.grad[0].item() == pytest.approx(ds.sum().item(), abs=1e-4)


def test_grad_scale_multiplies_step_gradient_only():
    x = torch.randn(4, 8, 5, 5)
    grads = {}
    for flag in (False, True):
        q = LsqQuantizer([4], "act", signed=True, grad_scale=flag)
        q.step.data.fill_(0.1)
        q.init_state.fill_(1)
        xi = x.clone().requires_grad_(True)
        out = q(xi)
        out.sum().backward()
        grads[flag] = (out.detach(), xi.grad, q.step.grad.clone())
    g = 1 / math.sqrt(7 * x.numel())
    assert torch.equal(grads[False][0], grads[True][0])
    assert torch.equal(grads[False][1], grads[True][1])
    assert grads[True][2].item() == pytest.approx(grads[False][2].item() * g, rel=1e-5)


def test_weight_init_three_sigma_per_candidate():
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3) * 0.05 + 0.01
    q = LsqQuantizer([2, 4, 6], "weight", signed=True)
    q.init_weight_steps(w)
    mu, sd = w.mean(), w.std()
    spread = max(abs(mu - 3 * sd), abs(mu + 3 * sd)).item()
    assert q.candidate_list == [6, 4, 2]
    for i, b in enumerate([6, 4, 2]):
        assert q.step[i].item() == pytest.approx(spread / 2 ** (b - 1), rel=1e-5)
    assert q.init_state.tolist() == [1, 1, 1]


def test_act_init_lazy_on_first_training_batch_only_for_active_bit():
    q = LsqQuantizer([6, 4], "act", signed=False)
    x = torch.rand(32, 10)
    q.set_bits(4)
    q.eval()
    with pytest.raises(RuntimeError, match="before initialisation"):
        q(x)
    q.train()
    q(x)
    assert q.init_state.tolist() == [0, 1]
    assert q.step[1].item() == pytest.approx(2 * x.abs().mean().item() / math.sqrt(15), rel=1e-5)
    before = q.step.detach().clone()
    q(x * 10)
    assert torch.equal(q.step.detach(), before), "an initialised step must never be re-initialised"


def test_unsigned_act_rejects_negative_first_batch():
    q = LsqQuantizer([4], "act", signed=False)
    with pytest.raises(ValueError, match="unsigned"):
        q(torch.randn(100))


def test_per_channel_weight_steps_and_broadcast():
    torch.manual_seed(1)
    w = torch.randn(4, 3, 3, 3) * torch.tensor([0.1, 1.0, 2.0, 0.01]).view(4, 1, 1, 1)
    q = LsqQuantizer([4], "weight", signed=True, per_channel=True, channels=4, grad_scale=False)
    out = q(w)
    for c in range(4):
        s = q.step[0, c].item()
        assert torch.allclose(out[c], torch.clamp(w[c] / s, -8, 7).round() * s)
    lin = LsqQuantizer([4], "weight", signed=True, per_channel=True, channels=4)
    assert lin(torch.randn(4, 7)).shape == (4, 7)


def test_full_precision_passthrough_and_bad_bit():
    q = LsqQuantizer([4], "weight", signed=True)
    x = torch.randn(10)
    q.set_bits(None)
    assert torch.equal(q(x), x)
    q.set_bits(32)
    assert torch.equal(q(x), x)
    with pytest.raises(ValueError, match="not a candidate"):
        q.set_bits(5)


class Tiny(nn.Module):
    """stem conv+bn, two searchable convs (second with a BN), searchable linear, classifier."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.body = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                                  nn.Conv2d(6, 6, 1, bias=False), nn.BatchNorm2d(6), nn.ReLU())
        self.hidden = nn.Linear(6, 5)
        self.fc = nn.Linear(5, 3)
        self.signed_inputs = frozenset()

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.body(x).mean((2, 3))
        return self.fc(torch.relu(self.hidden(x)))


def test_convert_wraps_searchable_in_order_and_keeps_fixed_layers():
    torch.manual_seed(0)
    model = Tiny()
    ref = {n: p.detach().clone() for n, p in model.named_parameters()}
    convert_model(model, image_size=8, weight_candidates=[6, 4, 2], act_candidates=[6, 4, 2],
                  switchable_bn="bit")
    names = [n for n, _ in searchable_layers(model)]
    assert names == ["body.0", "body.3", "hidden"]
    assert isinstance(model.conv1, QuantConv2d) and model.conv1.quan_a is None
    assert model.conv1.bits == (8, None)
    assert isinstance(model.fc, QuantLinear) and model.fc.bits == (8, 8) and not model.fc.quan_a.signed
    assert isinstance(model.bn1, nn.BatchNorm2d), "the stem BN stays plain"
    assert model.mpq_bn_of == {"body.0": "body.1", "body.3": "body.4"}
    assert isinstance(model.body[1], SwitchableBatchNorm2d) and list(model.body[1].copies) == ["6", "4", "2"]
    assert torch.equal(model.body[0].weight, ref["body.0.weight"])
    set_policy_bits(model, [6, 2, 4], [4, 6, 2])
    assert model.body[0].bits == (6, 4) and model.body[1].active == "6"
    assert model.body[3].bits == (2, 6) and model.body[4].active == "2"
    model.train()
    out = model(torch.randn(5, 3, 8, 8))
    assert out.shape == (5, 3) and torch.isfinite(out).all()
    set_uniform_bits(model, 4)
    assert all(m.bits == (4, 4) for _, m in searchable_layers(model))
    with pytest.raises(ValueError, match="searchable layers"):
        set_policy_bits(model, [4, 4], [4, 4])


def test_convert_with_policy_lists_and_fp_fixed_layers():
    model = Tiny()
    convert_model(model, image_size=8, weight_candidates=[[3], [5], [2]], act_candidates=[[4], [4], [6]],
                  fixed_bits=((None, None), (None, None)))
    assert [m.quan_w.candidate_list for _, m in searchable_layers(model)] == [[3], [5], [2]]
    assert model.conv1.bits == (None, None) and model.fc.bits == (None, None)
    with pytest.raises(ValueError, match="already quantized"):
        convert_model(model, image_size=8, weight_candidates=[4], act_candidates=[4])


# ------------------------------------------------------------------ fc_scale_trick (SAT, LIMPQ)
def _classifier(trick=True):
    torch.manual_seed(11)
    lin = nn.Linear(20, 7)
    lin.bias.data.uniform_(-0.5, 0.5)
    qw = LsqQuantizer([8], "weight", signed=True)
    qw.init_weight_steps(lin.weight)
    layer = QuantLinear(lin, qw, LsqQuantizer([8], "act", signed=False)).train()
    x = torch.rand(9, 20)
    layer(x)                                  # act step init
    layer.fc_scale_trick = trick
    return layer, x


def _sat_reference(layer, x):
    """The reference QuanLinear.forward: f = 1/(sqrt(out) * torch.std(q_w)); train scales q_w by
    f, eval divides the bias by f."""
    wq = layer.quan_w(layer.weight).detach()
    xq = layer.quan_a(x).detach()
    f = 1.0 / (layer.out_features ** 0.5) / torch.std(wq)
    return xq @ (wq * f).t() + layer.bias.detach(), xq @ wq.t() + layer.bias.detach() / f, f


@pytest.mark.parametrize("code_domain", [False, True])
def test_fc_scale_trick_train_and_eval_follow_the_reference(code_domain):
    layer, x = _classifier()
    layer.code_domain = code_domain
    train_ref, eval_ref, f = _sat_reference(layer, x)
    train_out = layer.train()(x).detach()
    eval_out = layer.eval()(x).detach()
    assert torch.allclose(train_out, train_ref, rtol=1e-5, atol=1e-6)
    assert torch.allclose(eval_out, eval_ref, rtol=1e-5, atol=1e-5)
    assert torch.allclose(eval_out * f, train_out, rtol=1e-5, atol=1e-6)   # a positive factor
    assert torch.equal(eval_out.argmax(1), train_out.argmax(1))
    plain, _ = _classifier(trick=False)
    assert not torch.allclose(plain.train()(x), train_out, atol=1e-3), "the trick changes the logits"


def test_fc_scale_trick_scales_the_weight_gradient():
    layer, x = _classifier()
    plain, _ = _classifier(trick=False)
    upstream = torch.randn(9, 7)
    (layer(x) * upstream).sum().backward()
    (plain(x) * upstream).sum().backward()
    f = _sat_reference(layer, x)[2]
    assert torch.allclose(layer.weight.grad, plain.weight.grad * f, rtol=1e-4, atol=1e-7)
    assert torch.allclose(layer.bias.grad, plain.bias.grad)


def test_fc_scale_trick_reaches_the_classifier_from_the_recipe():
    from mpq import models
    from mpq.build import quantize_for_policy
    from mpq.policy import Policy
    from mpq.quant import split_layers

    def build(recipe):
        model = models.create("resnet8", num_classes=10)
        names = split_layers(model)[1]
        policy = Policy("resnet8", 10, 16, names, [4] * len(names), [4] * len(names))
        return quantize_for_policy(model, policy, {}, recipe)

    on = build({"method": "lsq", "fc_scale_trick": True})
    off = build({"method": "lsq"})
    assert on.get_submodule(on.mpq_fixed[1]).fc_scale_trick
    assert not off.get_submodule(off.mpq_fixed[1]).fc_scale_trick
    assert sum(getattr(m, "fc_scale_trick", False) for m in on.modules()) == 1


# --- the shared Quantizer base ----------------------------------------------------------------
def _quantizer_classes():
    """Every nn.Module class named *Quantizer defined in an mpq.quant module."""
    import importlib
    import inspect
    import pkgutil

    import mpq.quant

    found = {}
    for info in pkgutil.iter_modules(mpq.quant.__path__):
        module = importlib.import_module(f"mpq.quant.{info.name}")
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and name.endswith("Quantizer") and issubclass(cls, nn.Module):
                found[f"{module.__name__}.{name}"] = cls
    return found


def test_every_quantizer_class_derives_from_the_base():
    from mpq.quant import Quantizer

    classes = _quantizer_classes()
    assert {"mpq.quant.lsq.LsqQuantizer", "mpq.quant.n2uq.LtqQuantizer", "mpq.quant.n2uq.L1WeightQuantizer",
            "mpq.quant.ptq_layers.AffineActQuantizer", "mpq.quant.oscillation.TrackedLsqQuantizer"} <= set(classes)
    assert [n for n, cls in classes.items() if not issubclass(cls, Quantizer)] == []


@pytest.mark.parametrize("bits", range(2, 9))
def test_int_range_is_the_formula(bits):
    assert int_range(bits, signed=False) == (0, 2**bits - 1)
    assert int_range(bits, signed=True) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    assert int_range(bits, signed=True, symmetric=True) == (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)


@pytest.mark.parametrize("bits", [1, 9, 16])
def test_every_quantizer_refuses_an_unsupported_bit_width_with_one_message(bits):
    from mpq.quant.n2uq import L1WeightQuantizer, LtqQuantizer
    from mpq.quant.ptq_layers import AffineActQuantizer, PtqConv2d, PtqLinear

    expected = f"bit-width {bits} is not supported; use 2..8 (None or 32 for full precision)"
    builders = {
        "lsq weight": lambda: LsqQuantizer([bits], "weight", signed=True),
        "lsq act": lambda: LsqQuantizer([4, bits], "act", signed=False),
        "ltq": lambda: LtqQuantizer(bits),
        "l1 weight": lambda: L1WeightQuantizer(bits),
        "affine act": lambda: AffineActQuantizer(bits),
        "ptq conv": lambda: PtqConv2d(nn.Conv2d(2, 3, 1), bits, 8),
        "ptq linear": lambda: PtqLinear(nn.Linear(2, 3), bits, 8),
        "int_range": lambda: int_range(bits, signed=True),
    }
    switches = {
        "lsq set_bits": LsqQuantizer([4], "weight", signed=True),
        "ltq set_bits": LtqQuantizer(4),
        "l1 set_bits": L1WeightQuantizer(4),
        "affine set_bits": AffineActQuantizer(4),
    }
    builders.update({name: (lambda q=q: q.set_bits(bits)) for name, q in switches.items()})
    messages = {}
    for name, build in builders.items():
        with pytest.raises(ValueError) as err:
            build()
        messages[name] = str(err.value)
    assert messages == dict.fromkeys(builders, expected)
