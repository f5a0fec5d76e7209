"""N2UQ: LTQ, L1 weight quantizer, fp32 codes under autocast, the recipe on RPReLU ResNets."""
import pytest
import torch
from torch import nn

import mpq.models
from mpq.config import section_defaults
from mpq.build import quantize_for_policy
from mpq.checkpoint import load_state
from mpq.models.rprelu import RPReLU, RPReLUBlock
from mpq.policy import Policy
from mpq.quant import convert_model, set_policy_bits
from mpq.quant.convert import split_layers
from mpq.quant.layers import QuantConv2d
from mpq.quant.lsq import LsqQuantizer
from mpq.quant.n2uq import (L1WeightQuantizer, LtqQuantizer, l1_weight_quant, ltq_surrogate,
                            use_n2uq_quantizers)
from mpq.quant.range_init import init_act_steps
from mpq.train.qat import build_finetune_optimizer


def _random_ltq(bits, seed):
    torch.manual_seed(seed)
    q = LtqQuantizer(bits)
    K = q.widths.numel()
    with torch.no_grad():
        q.widths.copy_(torch.rand(K) * 3 / K + 0.2 / K)
        q.start.fill_(-0.3)
        q.scale1.fill_(1.3)
        q.scale2.fill_(0.7)
    return q


def _params(q):
    return q.scale1, q.start, q.widths, q.scale2


def _away_from_edges(q, x, margin=1e-3):
    """Keep only inputs at least `margin` from every interval edge (where F has kinks)."""
    with torch.no_grad():
        a = q.widths.clamp_min(q.eps)
        d = torch.cat([q.start.reshape(1), q.start + a.cumsum(0)])
        u = q.scale1 * x
        return x[((u.unsqueeze(-1) - d).abs() > margin).all(-1)]


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_forward_is_rounded_surrogate_with_uniform_levels(bits):
    q = _random_ltq(bits, bits)
    x = torch.randn(4000) * 2
    with torch.no_grad():
        out = q(x)
        F = ltq_surrogate(x, *_params(q)) / q.scale2
    K = 2**bits - 1
    delta = 2 / K
    assert torch.allclose(out / q.scale2, delta * torch.round(F / delta), atol=1e-5)
    levels = out / (q.scale2 * delta)
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert levels.min() >= 0 and levels.max() <= K
    assert len(torch.unique(levels.round())) == K + 1, "every output level is reachable"


def test_initial_ltq_is_uniform_quantizer_on_0_2():
    q = LtqQuantizer(2)
    x = torch.linspace(-1, 3, 1001)
    expected = torch.clamp(torch.round(x / (2 / 3)), 0, 3) * (2 / 3)
    assert torch.allclose(q(x), expected, atol=1e-6)


@pytest.mark.parametrize("bits", [2, 3])
def test_gste_gradients_match_surrogate_autograd_and_finite_differences(bits):
    """x, scale1, start and widths follow scale2·F(scale1·x); scale2 gets the forward value x_q."""
    q = _random_ltq(bits, 10 + bits)
    x = _away_from_edges(q, torch.randn(300, dtype=torch.float32) * 1.5)
    upstream = torch.randn_like(x)
    xg = x.clone().requires_grad_(True)
    out = q(xg)
    (out * upstream).sum().backward()
    got = [xg.grad, q.scale1.grad, q.start.grad, q.widths.grad]
    assert q.scale2.grad.item() == pytest.approx((upstream * out.detach()).sum().item() / q.scale2.item(),
                                                 rel=1e-5)

    params64 = [p.detach().double().requires_grad_(True) for p in _params(q)]
    x64 = x.double().requires_grad_(True)
    (ltq_surrogate(x64, *params64) * upstream.double()).sum().backward()
    auto = [x64.grad] + [p.grad for p in params64[:3]]
    for g, a in zip(got, auto):
        assert torch.allclose(g.double(), a, rtol=1e-4, atol=1e-5)

    h = 1e-6
    for i, p in enumerate(params64[:3]):
        for j in range(p.numel()):
            def value(step):
                ps = [t.detach().clone() for t in params64]
                ps[i].view(-1)[j] += step
                return (ltq_surrogate(x.double(), *ps) * upstream.double()).sum().item()
            fd = (value(h) - value(-h)) / (2 * h)
            assert got[i + 1].reshape(-1)[j].item() == pytest.approx(fd, rel=1e-3, abs=1e-5)
    xs = x.double().clone()
    fd_x = (ltq_surrogate(xs + h, *params64) - ltq_surrogate(xs - h, *params64)) / (2 * h)
    assert torch.allclose(got[0].double(), fd_x.detach() * upstream.double(), rtol=1e-3, atol=1e-5)


def test_gste_closed_forms_for_one_input():
    """The G-STE closed forms (docs/methods/n2uq.md) for one u in segment k = 2 of a 2-bit LTQ."""
    q = _random_ltq(2, 5)
    with torch.no_grad():
        q.widths.copy_(torch.tensor([0.5, 0.8, 0.6]))
        q.start.fill_(0.1)
        q.scale1.fill_(1.0)
        q.scale2.fill_(0.7)
    delta, s2 = 2 / 3, 0.7
    x = torch.tensor([0.9], requires_grad=True)          # d = [0.1, 0.6, 1.4, 2.0]: segment 2
    out = q(x)
    out.sum().backward()
    a2, d1 = 0.8, 0.6
    assert x.grad.item() == pytest.approx(s2 * delta / a2)
    assert q.scale1.grad.item() == pytest.approx(s2 * 0.9 * delta / a2)
    assert q.start.grad.item() == pytest.approx(-s2 * delta / a2)
    assert q.widths.grad.tolist() == pytest.approx([-s2 * delta / a2, -s2 * delta * (0.9 - d1) / a2**2, 0.0])
    assert q.scale2.grad.item() == pytest.approx(out.item() / s2)


def test_gradients_vanish_outside_and_for_clamped_widths():
    q = _random_ltq(2, 6)
    with torch.no_grad():
        q.widths[0] = -0.5                               # clamped to eps: no gradient
    x = torch.tensor([-5.0, 0.0, 0.5, 10.0], requires_grad=True)
    q(x).sum().backward()
    assert x.grad[0] == 0 and x.grad[3] == 0
    assert q.widths.grad[0] == 0


def test_ltq_rejects_other_bits():
    q = LtqQuantizer(3)
    q.set_bits(None)
    q.set_bits(3)
    with pytest.raises(ValueError, match="intervals"):
        q.set_bits(4)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_l1_weight_levels_have_no_zero_and_scale_by_mean_abs(bits):
    torch.manual_seed(bits)
    w = torch.randn(5, 3, 3, 3) * torch.tensor([0.1, 1, 2, 0.5, 0.01]).view(5, 1, 1, 1)
    out = l1_weight_quant(w, bits)
    levels = 2**bits - 1
    gamma = levels / 2 ** (bits - 1)
    for c in range(5):
        s = gamma * w[c].abs().mean()
        codes = out[c] / s * levels                      # odd integers in [-levels, levels]
        assert torch.allclose(codes, codes.round(), atol=1e-3)
        odd = codes.round().long()
        assert (odd % 2 == 1).all() and odd.abs().max() <= levels
    assert len(torch.unique((out[1] / (gamma * w[1].abs().mean()) * levels).round())) <= 2**bits


def test_l1_weight_gradient_is_one_over_scale_without_clip_mask():
    torch.manual_seed(0)
    w = (torch.randn(3, 8) * 2).requires_grad_(True)
    up = torch.randn(3, 8)
    (l1_weight_quant(w, 2) * up).sum().backward()
    s = 1.5 * w.detach().abs().mean(1, keepdim=True)
    assert torch.allclose(w.grad, up / s, rtol=1e-5)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv3 = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 3)
        self.signed_inputs = frozenset({"conv3"})

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.fc(torch.relu(self.conv3(x)).mean((2, 3)))


def test_mixed_bits_swap_keeps_fixed_layers_and_signed_inputs_on_lsq():
    model = convert_model(Net(), image_size=6, weight_candidates=[[2], [4]], act_candidates=[[3], [2]])
    set_policy_bits(model, [2, 4], [3, 2])
    use_n2uq_quantizers(model)
    assert isinstance(model.conv2.quan_w, L1WeightQuantizer) and model.conv2.quan_w.bits == 2
    assert isinstance(model.conv2.quan_a, LtqQuantizer) and model.conv2.quan_a.widths.numel() == 7
    assert isinstance(model.conv3.quan_w, L1WeightQuantizer) and model.conv3.quan_w.bits == 4
    assert not isinstance(model.conv3.quan_a, LtqQuantizer), "signed input keeps LSQ"
    assert not isinstance(model.conv1.quan_w, L1WeightQuantizer)
    assert not isinstance(model.fc.quan_a, LtqQuantizer)
    model.train()
    out = model(torch.randn(4, 3, 6, 6))
    out.sum().backward()
    assert model.conv2.quan_a.widths.grad is not None


# ------------------------------------------------------------ fp32 codes under bf16 autocast
def _ltq_codes_and_grads(q, x, autocast):
    for p in q.parameters():
        p.grad = None
    xg = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        codes, scale = q.codes_and_scale(xg)
        out = q(xg)
    torch.manual_seed(0)
    (out.float() * torch.randn(out.shape)).sum().backward()
    return codes, scale, out, [xg.grad] + [p.grad.clone() for p in _params(q)]


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
def test_ltq_codes_and_gradients_are_fp32_exact_under_bf16_autocast(bits, input_dtype):
    q = _random_ltq(bits, 20 + bits)
    x = (torch.randn(2000) * 1.5).to(input_dtype)
    codes, scale, out, grads = _ltq_codes_and_grads(q, x, autocast=True)
    ref_codes, ref_scale, ref_out, ref_grads = _ltq_codes_and_grads(q, x, autocast=False)
    assert codes.dtype == out.dtype == torch.float32
    assert torch.equal(codes, ref_codes) and torch.equal(out, ref_out) and torch.equal(scale, ref_scale)
    # the codes are those of the fp32 input (a bf16 input is exactly representable in fp32)
    with torch.no_grad():
        fp32_codes, _ = q.codes_and_scale(x.float())
    assert torch.equal(codes, fp32_codes)
    for g, r in zip(grads, ref_grads):
        assert torch.equal(g, r)


@pytest.mark.parametrize("bits", range(2, 9))
def test_l1_weight_codes_and_gradients_are_fp32_exact_under_bf16_autocast(bits):
    torch.manual_seed(bits)
    w = torch.randn(6, 4, 3, 3) * torch.tensor([0.01, 0.1, 1, 2, 0.5, 3]).view(6, 1, 1, 1)
    up = torch.randn_like(w)
    q = L1WeightQuantizer(bits)

    def run(autocast):
        wg = w.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            codes, scale = q.codes_and_scale(wg)
            out = q(wg)
        (out * up).sum().backward()
        return codes, scale, out, wg.grad

    for got, ref in zip(run(True), run(False)):
        assert got.dtype == torch.float32 and torch.equal(got, ref)


# ------------------------------------------------------------------- code-domain interface
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_ltq_codes_times_scale_is_the_forward_with_its_gradients(bits):
    q = _random_ltq(bits, 40 + bits)
    x = torch.randn(500) * 1.5
    codes, scale = q.codes_and_scale(x)
    K = 2**bits - 1
    assert torch.equal(codes, codes.round()) and codes.min() >= 0 and codes.max() <= K
    assert scale.numel() == 1 and scale.item() == pytest.approx(q.scale2.item() * 2 / K)
    up = torch.randn_like(x)

    def grads(fn):
        for p in q.parameters():
            p.grad = None
        xg = x.clone().requires_grad_(True)
        out = fn(xg)
        (out * up).sum().backward()
        return out.detach(), [xg.grad] + [p.grad.clone() for p in _params(q)]

    via_codes, g_codes = grads(lambda t: torch.mul(*q.codes_and_scale(t)))
    via_forward, g_forward = grads(q)
    assert torch.equal(via_codes, via_forward)
    for a, b in zip(g_codes, g_forward):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    # scale2 gets the forward value x_q (per unit scale2), reached through the scale
    assert g_codes[4].item() == pytest.approx((up * via_forward).sum().item() / q.scale2.item(), rel=1e-5)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_l1_weight_codes_are_odd_integers_times_the_channel_scale(bits):
    torch.manual_seed(bits)
    w = (torch.randn(4, 3, 3, 3) * torch.tensor([0.1, 1, 2, 0.5]).view(4, 1, 1, 1)).requires_grad_(True)
    codes, scale = L1WeightQuantizer(bits).codes_and_scale(w)
    levels = 2**bits - 1
    s_c = levels / 2 ** (bits - 1) * w.detach().abs().mean((1, 2, 3))
    assert torch.allclose(scale.flatten(), s_c / levels)
    assert torch.equal(codes, codes.round())
    odd = codes.detach().long()
    assert (odd % 2 == 1).all() and odd.abs().max() <= levels
    # the reference's Q = 2 round((clip(W/s_c) + 1)(2^n-1)/2)/(2^n-1) - 1, in code units
    unit = (w.detach() / s_c.view(-1, 1, 1, 1)).clamp(-1, 1)
    q_ref = 2 * torch.round((unit + 1) * levels / 2) / levels - 1
    assert torch.equal(odd, (q_ref * levels).round().long())
    up = torch.randn_like(w)
    (codes * scale * up).sum().backward()
    assert torch.allclose(w.grad, up / s_c.view(-1, 1, 1, 1), rtol=1e-5)


# ------------------------------------------------------- the N2UQ recipe on the RPReLU ResNets
def _resnet8_for(recipe, bits=2, seed=0):
    torch.manual_seed(seed)
    model = mpq.models.create("resnet8", 10, shortcut="B")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-0.5, 0.5)
    _, names, _ = split_layers(model)
    policy = Policy("resnet8", 10, 16, names, [bits] * len(names), [bits] * len(names))
    return quantize_for_policy(model, policy, {}, recipe), policy


def test_n2uq_recipe_builds_the_rprelu_structure_with_an_ltq_on_every_block_conv():
    model, policy = _resnet8_for({"method": "n2uq"})
    assert all(isinstance(model.get_submodule(f"layer{i}.0"), RPReLUBlock) for i in (1, 2, 3))
    for name in policy.names:                    # block convs and the two downsample convs
        layer = model.get_submodule(name)
        assert isinstance(layer.quan_a, LtqQuantizer), name
        assert isinstance(layer.quan_w, L1WeightQuantizer), name
    assert "layer2.0.downsample.0" in policy.names
    assert isinstance(model.fc.quan_a, LsqQuantizer)
    plain, _ = _resnet8_for({"method": "n2uq", "rprelu": False})
    assert not any(isinstance(m, RPReLU) for m in plain.modules())
    lsq, _ = _resnet8_for({"method": "lsq", "rprelu": True})
    assert isinstance(lsq.layer2[0], RPReLUBlock)
    assert lsq.layer2[0].conv1.quan_a.signed, "LSQ behind an RPReLU sees signed inputs"


def test_rprelu_relu_init_n2uq_model_equals_the_plain_n2uq_model_at_step_0():
    x = torch.randn(4, 3, 16, 16)
    outputs = []
    for rprelu in (True, False):
        model, _ = _resnet8_for({"method": "n2uq", "rprelu": rprelu})
        # The RPReLU model's classifier reads a signed input (the last RPReLU can go negative once
        # its slopes train), so its 8-bit LSQ is signed; give the plain model the same grid.
        assert model.fc.quan_a.signed == rprelu
        model.fc.quan_a.signed = True
        init_act_steps(model, x)
        with torch.no_grad():
            outputs.append(model(x))
    assert torch.equal(*outputs)


@pytest.mark.parametrize("init", ["relu", "reference"])
def test_finetuned_rprelu_state_dict_rebuilds_from_the_recipe(init):
    recipe = {"method": "n2uq", "rprelu_init": init}
    trained, policy = _resnet8_for(recipe)
    x = torch.randn(2, 3, 16, 16)
    init_act_steps(trained, x)
    with torch.no_grad():
        for m in trained.modules():
            if isinstance(m, RPReLU):
                m.shift_in.uniform_(-0.1, 0.1)
    rebuilt = quantize_for_policy(mpq.models.create("resnet8", 10, shortcut="B"), policy, {}, recipe)
    load_state(rebuilt, trained.state_dict(), "test")
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), trained.eval()(x))


def test_rprelu_parameters_get_base_lr_and_no_weight_decay():
    """The reference's 'other parameters' group: base lr, weight decay 0 (resnet/train.py)."""
    model, _ = _resnet8_for({"method": "n2uq"})
    recipe = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-4,
              "quant_optimizer": {"name": "adam", "lr": 1e-4}}
    opt = build_finetune_optimizer(model, section_defaults("finetune.*", recipe))
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    rprelu_params = [p for m in model.modules() if isinstance(m, RPReLU) for p in m.parameters()]
    assert len(rprelu_params) == 3 * 3 * 3      # 3 tensors per RPReLU, 3 RPReLUs per block, 3 blocks
    for p in rprelu_params:
        assert group_of[id(p)]["weight_decay"] == 0.0 and group_of[id(p)]["lr"] == 1e-3
    ltq = model.layer1[0].conv1.quan_a
    assert group_of[id(ltq.widths)]["lr"] == 1e-4
    assert group_of[id(model.layer1[0].conv1.weight)]["weight_decay"] == 1e-4


def test_full_precision_n2uq_quantizers_offer_no_codes():
    ltq, l1 = LtqQuantizer(2), L1WeightQuantizer(None)
    ltq.set_bits(None)
    x = torch.randn(5)
    assert ltq.codes_and_scale(x) is None and torch.equal(ltq(x), x)
    assert l1.codes_and_scale(x.view(5, 1)) is None


def test_quant_conv_with_n2uq_quantizers_in_the_code_domain_matches_fake_quantization():
    torch.manual_seed(0)
    q = _random_ltq(3, 7)
    layer = QuantConv2d(nn.Conv2d(4, 6, 3, padding=1, bias=False), L1WeightQuantizer(3), q)
    x = torch.randn(2, 4, 5, 5) + 0.5
    results = []
    for code_domain in (True, False):
        layer.code_domain = code_domain
        layer.zero_grad()
        xg = x.clone().requires_grad_(True)
        out = layer(xg)
        out.square().sum().backward()
        results.append((out.detach(), xg.grad, layer.weight.grad, q.widths.grad, q.scale2.grad))
    for a, b in zip(*results):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
