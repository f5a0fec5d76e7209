"""LSQ under bf16 autocast: codes equal the fp32 codes exactly, and the code-domain layer path
(s_a * s_w * conv(codes_a, codes_w)) matches the fp32 fake-quant emulation, on the grid.

Everything runs on CPU under torch.autocast("cpu", dtype=torch.bfloat16).
"""
import pytest
import torch
from torch import nn

from mpq.quant import LsqQuantizer, QuantConv2d, QuantLinear, int_range

BF16 = torch.bfloat16


def autocast():
    return torch.autocast("cpu", dtype=BF16)


def fp32_codes(x, step, qn, qp):
    """The re-derivation: the LSQ codes of x computed from fp32 values, outside autocast."""
    return torch.clamp(x.float() / step.float(), qn, qp).round()


def _quantizer(kind, signed, bits, per_channel, x):
    q = LsqQuantizer([bits], kind, signed=signed, per_channel=per_channel, channels=x.shape[0])
    if kind == "weight":
        q.init_weight_steps(x.float())
    else:
        q.train()
        q(x.float())          # lazy act init on the first batch
    return q


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("kind,signed,per_channel", [("weight", True, False), ("weight", True, True),
                                                     ("act", False, False), ("act", True, False)])
@pytest.mark.parametrize("dtype", [torch.float32, BF16])
def test_codes_equal_fp32_codes_under_autocast(bits, kind, signed, per_channel, dtype):
    torch.manual_seed(bits)
    x = torch.randn(16, 8, 3, 3) * 0.7
    if not signed:
        x = x.abs()
    x = x.to(dtype)
    q = _quantizer(kind, signed, bits, per_channel, x)
    step, qn, qp, _ = q.prepare(x)
    expected = fp32_codes(x, step.detach(), qn, qp)
    with autocast():
        codes = q.integer_codes(x)[0]
        fake = q(x)
        ste_codes, scale = q.codes_and_scale(x)
    assert codes.dtype == torch.float32 and torch.equal(codes, expected)
    assert torch.equal(ste_codes.detach(), expected)
    assert fake.dtype == dtype
    assert torch.equal(fake, (expected * step.detach().float()).to(dtype))
    assert torch.equal((ste_codes * scale).detach(), expected * step.detach().float())


def test_bf16_division_would_move_codes():
    """Why the fp32 cast matters: dividing a bf16 input by the step in bf16 (what autocast
    inputs got before) moves a few percent of the 6-bit codes."""
    torch.manual_seed(0)
    x = (torch.rand(8192) * 3).to(BF16)
    q = _quantizer("act", False, 6, False, x)
    step, qn, qp, _ = q.prepare(x)
    in_bf16 = torch.clamp(x / step.detach().to(BF16), qn, qp).round().float()
    exact = q.integer_codes(x)[0]
    assert (in_bf16 != exact).float().mean() > 0.01
    assert torch.equal(exact, fp32_codes(x, step.detach(), qn, qp))


# ---------------------------------------------------------------------------- layers
def _conv_layer(per_channel, bits=(5, 6), bias=True):
    torch.manual_seed(1)
    conv = nn.Conv2d(6, 8, 3, padding=1, bias=bias)
    if bias:
        conv.bias.data.uniform_(-0.3, 0.3)
    qw = LsqQuantizer([bits[0]], "weight", signed=True, per_channel=per_channel, channels=8)
    qw.init_weight_steps(conv.weight)
    layer = QuantConv2d(conv, qw, LsqQuantizer([bits[1]], "act", signed=False)).train()
    x = torch.rand(4, 6, 9, 9) * 2
    layer(x)                  # initialises the act step
    return layer, x


def _linear_layer(per_channel, bits=(5, 6), bias=True):
    torch.manual_seed(2)
    lin = nn.Linear(40, 12, bias=bias)
    if bias:
        lin.bias.data.uniform_(-0.3, 0.3)
    qw = LsqQuantizer([bits[0]], "weight", signed=True, per_channel=per_channel, channels=12)
    qw.init_weight_steps(lin.weight)
    layer = QuantLinear(lin, qw, LsqQuantizer([bits[1]], "act", signed=False)).train()
    x = torch.rand(16, 40) * 2
    layer(x)
    return layer, x


BUILDERS = {"conv": _conv_layer, "linear": _linear_layer}


def _scale_of(layer, x, ndim):
    """s_a * s_w laid out along the output's channel dim."""
    sa = layer.quan_a.prepare(x)[0].detach()
    sw = layer.quan_w.prepare(layer.weight)[0].detach().flatten()
    shape = [1] * ndim
    shape[1 if ndim == 4 else -1] = -1
    return (sa * sw).reshape(shape)


def _fractional(v):
    return (v - v.round()).abs().max().item()


@pytest.mark.parametrize("kind", ["conv", "linear"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_code_domain_output_matches_fp32_and_sits_on_the_grid(kind, per_channel):
    layer, x = BUILDERS[kind](per_channel, bias=False)
    reference = layer(x).detach()                          # fp32 fake-quant emulation
    with autocast():
        new = layer(x).detach()
        layer.code_domain = False
        old = layer(x).detach()                            # fake-quant under autocast
    assert new.dtype == torch.float32
    tol = 2 ** -7 * reference.abs().max()                  # bf16 rounding of the fp32 accumulator
    assert (new - reference).abs().max() <= tol
    levels_new = new / _scale_of(layer, x, new.dim())
    levels_old = old.float() / _scale_of(layer, x, new.dim())
    assert _fractional(levels_new) < 1e-3, "code-domain output is an integer times s_a * s_w"
    assert _fractional(levels_old) > 0.05, "bf16 fake-quant operands are off the grid"


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_code_domain_adds_bias_in_fp32(kind):
    layer, x = BUILDERS[kind](False, bias=True)
    layer.code_domain = True
    with_bias = layer(x).detach()
    bias = layer.bias.detach()
    shape = (1, -1, 1, 1) if kind == "conv" else (1, -1)
    layer.bias = None
    assert torch.allclose(with_bias - bias.view(shape), layer(x).detach(), atol=1e-5)


def _grads(layer, x, upstream, ctx):
    layer.zero_grad(set_to_none=True)
    xi = x.clone().requires_grad_(True)
    with ctx:
        out = layer(xi)
    (out.float() * upstream).sum().backward()
    return [xi.grad, layer.weight.grad, layer.quan_w.step.grad, layer.quan_a.step.grad,
            layer.bias.grad]


class _NoContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("kind", ["conv", "linear"])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("fused", [True, False])
def test_code_domain_gradients_match_fake_quant(kind, per_channel, fused):
    """Exactly in fp32 (forced code domain, no autocast), within bf16 tolerance under autocast."""
    layer, x = BUILDERS[kind](per_channel)
    layer.quan_w.fused = layer.quan_a.fused = fused
    upstream = torch.randn_like(layer(x))
    layer.code_domain = False
    ref = _grads(layer, x, upstream, _NoContext())
    layer.code_domain = True
    exact = _grads(layer, x, upstream, _NoContext())
    layer.code_domain = None
    bf16 = _grads(layer, x, upstream, autocast())
    for r, e, b in zip(ref, exact, bf16):
        assert torch.allclose(e, r, rtol=1e-4, atol=1e-5 * r.abs().max())
        assert (b - r).norm() <= 1e-2 * r.norm()


def test_multi_bit_quantizer_in_code_domain():
    """A supernet-style layer (five candidates, bits switched between steps): at every bit the
    codes equal the fp32 codes and the layer output the fp32 emulation."""
    torch.manual_seed(4)
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    qw = LsqQuantizer([6, 5, 4, 3, 2], "weight", signed=True)
    qw.init_weight_steps(conv.weight)
    layer = QuantConv2d(conv, qw, LsqQuantizer([6, 5, 4, 3, 2], "act", signed=False)).train()
    x = (torch.rand(2, 4, 7, 7) * 2).to(BF16)
    for bits in (6, 5, 4, 3, 2):
        layer.set_bits(bits, bits)
        reference = layer(x.float()).detach()
        with autocast():
            codes, _ = layer.quan_a.codes_and_scale(x)
            out = layer(x).detach()
        step, qn, qp, _ = layer.quan_a.prepare(x)
        assert torch.equal(codes.detach(), fp32_codes(x, step.detach(), qn, qp))
        assert (out - reference).abs().max() <= 2 ** -7 * reference.abs().max()
        assert _fractional(out / _scale_of(layer, x, 4)) < 1e-3


def test_falls_back_to_fake_quant_without_codes():
    """A full-precision input, a quantizer with hooks, or a subclass that changed forward alone:
    the layer fake-quantizes (its output then has the autocast dtype)."""
    from mpq.quant.layers import CodeQuantizer

    layer, x = _conv_layer(False)

    class Frozen(LsqQuantizer):
        def forward(self, w):
            return super().forward(w)

    assert isinstance(layer.quan_w, CodeQuantizer)
    with autocast():
        assert layer(x).dtype == torch.float32
        layer.quan_a.set_bits(None)
        assert layer(x).dtype == BF16
        layer.quan_a.set_bits(6)
        seen = []
        handle = layer.quan_a.register_forward_pre_hook(lambda mod, inputs: seen.append(1))
        assert layer(x).dtype == BF16 and seen == [1], "a hooked quantizer still runs as a module"
        handle.remove()
        frozen = Frozen(**layer.quan_w.config())
        frozen.load_state_dict(layer.quan_w.state_dict())
        assert frozen.codes_and_scale(layer.weight) is None
        layer.quan_w = frozen
        assert layer(x).dtype == BF16


def test_eager_fused_codes_match_autograd_codes():
    """The codes Function against the plain graph lsq_codes_ste(x, scale_grad(s, g)), and both
    against the closed form: s * codes has the LSQ gradients (the scale is used detached)."""
    from mpq.quant.lsq_kernels import lsq_codes_fused, lsq_codes_ste, scale_grad

    torch.manual_seed(5)
    qn, qp = int_range(3, True)
    x = torch.tensor([-2.0, -1.0, 1.5, 3.0, 0.3, -0.74, 0.26])   # edges, above, inside
    results = []
    for fn in (lambda a, s: lsq_codes_fused(a, s, qn, qp, 0.3),
               lambda a, s: lsq_codes_ste(a, scale_grad(s, 0.3), qn, qp)):
        xi, si = x.clone().requires_grad_(True), torch.tensor(0.5, requires_grad=True)
        out = fn(xi, si)
        (out * torch.arange(1.0, 8.0)).sum().backward()
        results.append((out.detach(), xi.grad, si.grad))
    (o1, gx1, gs1), (o2, gx2, gs2) = results
    assert torch.equal(o1, o2)
    assert torch.allclose(gx1, gx2) and torch.allclose(gs1, gs2)
    inside = torch.tensor([0, 1, 0, 0, 1, 1, 1], dtype=torch.bool)
    assert torch.equal(gx1 != 0, inside)
    weights, u = torch.arange(1.0, 8.0), x / 0.5
    assert torch.allclose(gx1[inside], weights[inside] / 0.5)
    ds = torch.where(inside, u.round() - u, u.clamp(qn, qp))      # LSQ: round(u) - u, Qn, Qp
    assert torch.allclose(gs1, 0.3 * (weights * ds).sum() / 0.5)
