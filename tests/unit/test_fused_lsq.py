"""The fused LSQ Function against the reference graph (lsq_fake_quant + scale_grad)."""
import shutil

import pytest
import torch

from mpq.quant import LsqQuantizer, int_range, lsq_fake_quant, scale_grad
from mpq.quant import lsq_kernels as lsq
from mpq.quant.lsq_kernels import lsq_fake_quant_fused


def _run(fn, x, step):
    torch.manual_seed(0)
    x = x.clone().requires_grad_(True)
    step = step.clone().requires_grad_(True)
    out = fn(x, step)
    upstream = torch.randn_like(out)
    out.backward(upstream)
    return out.detach(), x.grad, step.grad


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("g", [1.0, 0.013])
@pytest.mark.parametrize("bits,signed", [(2, True), (4, True), (3, False), (8, False)])
def test_fused_matches_reference_values_and_grads(per_channel, g, bits, signed):
    torch.manual_seed(bits * 7 + int(per_channel))
    qn, qp = int_range(bits, signed)
    x = torch.randn(6, 5, 4, 4) * 1.5
    if not signed:
        x = x.abs()
    step = torch.rand(6, 1, 1, 1) * 0.3 + 0.05 if per_channel else torch.tensor(0.21)

    def reference(xi, si):
        return lsq_fake_quant(xi, scale_grad(si, g) if g != 1.0 else si, qn, qp)

    def fused(xi, si):
        return lsq_fake_quant_fused(xi, si, qn, qp, g)

    ref = _run(reference, x, step)
    got = _run(fused, x, step)
    assert torch.equal(got[0], ref[0])
    assert torch.allclose(got[1], ref[1], atol=1e-6)
    assert got[2].shape == step.shape
    assert torch.allclose(got[2], ref[2], rtol=1e-4, atol=1e-6)


def test_fused_handles_exact_range_edges_like_reference():
    """u exactly at Qn or Qp counts as outside (the clamp's backward mask is strict)."""
    qn, qp = int_range(3, True)
    x = torch.tensor([-2.0, -1.0, 1.5, 3.0, 0.3])   # u = Qn, inside, Qp, above, inside
    step = torch.tensor(0.5)
    ref = _run(lambda a, s: lsq_fake_quant(a, s, qn, qp), x, step)
    got = _run(lambda a, s: lsq_fake_quant_fused(a, s, qn, qp), x, step)
    assert torch.equal(got[0], ref[0])
    assert torch.equal(got[1], ref[1])
    assert (got[1][[0, 2, 3]] == 0).all(), "no x-gradient at or beyond the range edges"
    assert torch.allclose(got[2], ref[2], atol=1e-6)


@pytest.mark.parametrize("kind,per_channel", [("act", False), ("weight", False), ("weight", True)])
def test_quantizer_flag_selects_same_result(kind, per_channel):
    torch.manual_seed(3)
    x = torch.randn(8, 3, 5, 5)
    if kind == "act":
        x = x.relu()
    results = []
    for fused in (True, False):
        q = LsqQuantizer([4], kind, signed=kind == "weight", per_channel=per_channel, channels=8,
                         fused=fused)
        if kind == "weight":
            q.init_weight_steps(x)
        xi = x.clone().requires_grad_(True)
        out = q(xi)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out.detach(), xi.grad, q.step.grad))
    (o1, gx1, gs1), (o2, gx2, gs2) = results
    assert torch.equal(o1, o2)
    assert torch.allclose(gx1, gx2, atol=1e-6)
    assert torch.allclose(gs1, gs2, rtol=1e-4, atol=1e-7)


def test_quantizer_defaults_to_fused():
    assert LsqQuantizer([4], "act", signed=False).fused


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("cc") is None,
                    reason="torch.compile on CPU needs a C++ compiler")
@pytest.mark.parametrize("per_channel", [False, True])
def test_compiled_path_matches_reference(monkeypatch, per_channel):
    """The torch.compile'd kernels that CUDA uses, generated for CPU here (same graph, same
    dynamic shapes and tensor bounds): values and gradients equal the reference formulation,
    across two shapes and two bit-widths through one compiled graph."""
    monkeypatch.setattr(lsq, "_use_compiled", lambda x: True)
    for shape, bits in (((6, 5, 4, 4), 4), ((6, 3, 7, 2), 2)):
        torch.manual_seed(bits)
        qn, qp = int_range(bits, True)
        x = torch.randn(*shape) * 1.5
        step = torch.rand(6, 1, 1, 1) * 0.3 + 0.05 if per_channel else torch.tensor(0.21)
        ref = _run(lambda a, s: lsq_fake_quant(a, scale_grad(s, 0.05), qn, qp), x, step)
        got = _run(lambda a, s: lsq_fake_quant_fused(a, s, qn, qp, 0.05), x, step)
        assert torch.allclose(got[0], ref[0], atol=1e-6)
        assert torch.allclose(got[1], ref[1], atol=1e-6)
        assert got[2].shape == step.shape
        assert torch.allclose(got[2], ref[2], rtol=1e-4, atol=1e-6)


def test_quantizer_reads_no_buffer_in_forward_once_initialised(monkeypatch):
    """After the first step, forward decides bit index and initialisation from Python state, so
    a CUDA model is never stalled by a device-to-host read per quantizer; loading a state dict
    refreshes that state from the buffers."""
    q = LsqQuantizer([4, 2], "act", signed=False).train()
    x = torch.rand(4, 3, 5, 5)
    q(x)
    monkeypatch.setattr(LsqQuantizer, "__getattr__", lambda self, name: pytest.fail(
        f"forward read the buffer/parameter lookup {name!r}") if name in ("init_state", "candidates")
        else torch.nn.Module.__getattr__(self, name))
    q(x)
    monkeypatch.undo()
    fresh = LsqQuantizer([4, 2], "act", signed=False).eval()
    with pytest.raises(RuntimeError, match="before initialisation"):
        fresh(x)
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh(x), q.eval()(x))


@pytest.mark.parametrize("per_channel", [False, True])
def test_kernels_agree_on_bf16_input_and_compute_in_fp32(per_channel):
    """A bf16 input (what autocast hands a quantizer): reference graph and fused Function give
    the same bf16 output, the fp32 fake-quant of the fp32 values, and the same gradients."""
    torch.manual_seed(9)
    qn, qp = int_range(6, True)
    x = (torch.randn(6, 5, 4, 4) * 1.5).to(torch.bfloat16)
    step = torch.rand(6, 1, 1, 1) * 0.05 + 0.02 if per_channel else torch.tensor(0.0371)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = _run(lambda a, s: lsq_fake_quant(a, scale_grad(s, 0.05), qn, qp), x, step)
        got = _run(lambda a, s: lsq_fake_quant_fused(a, s, qn, qp, 0.05), x, step)
    exact = (torch.clamp(x.float() / step, qn, qp).round() * step).to(torch.bfloat16)
    assert ref[0].dtype == got[0].dtype == torch.bfloat16
    assert torch.equal(ref[0], exact) and torch.equal(got[0], exact)
    assert got[1].dtype == torch.bfloat16 and torch.equal(got[1], ref[1])
    assert torch.allclose(got[2], ref[2], rtol=1e-4, atol=1e-6)


def test_scale_grad_keeps_the_exact_value():
    """(x - xg) + xg can be an ulp off x; the step a kernel sees must be exactly the parameter."""
    s = torch.linspace(0.01, 3.0, 997)
    for g in (0.013, 0.0071, 1 / 3):
        assert torch.equal(scale_grad(s, g), s)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("cc") is None,
                    reason="torch.compile on CPU needs a C++ compiler")
@pytest.mark.parametrize("per_channel", [False, True])
def test_compiled_codes_match_the_codes_graph(monkeypatch, per_channel):
    """The compiled code-domain kernels (CUDA's path, generated for CPU here) against the plain
    graph lsq_codes_ste: same codes, same gradients, for a bf16 input."""
    from mpq.quant.lsq_kernels import lsq_codes_fused, lsq_codes_ste

    monkeypatch.setattr(lsq, "_use_compiled", lambda x: True)
    torch.manual_seed(2)
    qn, qp = int_range(4, True)
    x = (torch.randn(6, 5, 4, 4) * 1.5).to(torch.bfloat16)
    step = torch.rand(6, 1, 1, 1) * 0.3 + 0.05 if per_channel else torch.tensor(0.21)
    ref = _run(lambda a, s: lsq_codes_ste(a, scale_grad(s, 0.05), qn, qp), x, step)
    got = _run(lambda a, s: lsq_codes_fused(a, s, qn, qp, 0.05), x, step)
    assert torch.equal(got[0], ref[0])
    assert got[1].dtype == torch.bfloat16 and torch.allclose(got[1].float(), ref[1].float(), rtol=1e-2)
    assert got[2].shape == step.shape
    assert torch.allclose(got[2], ref[2], rtol=1e-4, atol=1e-6)
