"""N2UQ's LTQ and L1 weight quantizer against specs/n2uq.md sections 2-4."""
import pytest
import torch
from torch import nn

from mpq.quant import convert_model, set_policy_bits
from mpq.quant.n2uq import (L1WeightQuantizer, LtqQuantizer, l1_weight_quant, ltq_surrogate,
                            use_n2uq_quantizers)


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
    """The table of spec section 3 for one u in segment k = 2 of a 2-bit LTQ."""
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
