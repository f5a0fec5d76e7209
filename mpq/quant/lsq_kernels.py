"""The LSQ kernels: reference autograd formula, fused Function, compiled and eager variants.

Kept apart from the quantizer module so that what computes the numbers (and must stay bit-exact
across the variants) can be read and tested on its own.

Every kernel computes x/s, the clamp, the rounding and the integer codes in float32 whatever
the input dtype: a bf16 input (under autocast) divided in bf16 lands on the wrong integer for a
few percent of the elements at 6 bits. The fake-quant output goes back in the input's dtype.
"""
from __future__ import annotations

import functools
import os

import torch

F32 = torch.float32


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity gradient in the backward pass."""
    return (x.round() - x).detach() + x


def scale_grad(x: torch.Tensor, g: float) -> torch.Tensor:
    """Exactly the value of x, gradient multiplied by g.

    Written x + (xg - xg) with the first two detached: the reference's (x - xg) + xg can land
    an ulp off x, which would move a code and make the kernels differ.
    """
    xg = x * g
    return x.detach() + (xg - xg.detach())


def lsq_fake_quant(x: torch.Tensor, step: torch.Tensor, qn: int, qp: int) -> torch.Tensor:
    """Reference LSQ: clamp(x/s) before rounding, STE round; autograd yields the LSQ gradients."""
    step = step.to(F32)
    return (round_ste(torch.clamp(x.to(F32) / step, qn, qp)) * step).to(x.dtype)


def lsq_codes_ste(x: torch.Tensor, step: torch.Tensor, qn: int, qp: int) -> torch.Tensor:
    """The codes round(clamp(x/s)) as exact fp32 integers, with gradients such that
    step.detach() * codes has the LSQ gradients: d/dx = 1/s inside, d/ds = (round(u) - u)/s
    inside and Qn/s, Qp/s outside.

    The whole step gradient rides on the codes (the scale is applied detached): splitting it as
    codes + s * d codes/ds would add two large terms that cancel, losing bf16 precision.
    """
    with torch.no_grad():
        codes = lsq_integers(x, step, qn, qp)
    y = lsq_fake_quant(x.to(F32), step, qn, qp) / step.detach().to(F32)
    return codes + (y - y.detach())


def lsq_integers(x: torch.Tensor, step: torch.Tensor, qn: int, qp: int) -> torch.Tensor:
    """The integer codes LSQ assigns to x, as fp32 (no gradient); fake-quant equals step * codes."""
    with torch.no_grad():
        return torch.clamp(x.to(F32) / step.to(F32), qn, qp).round()


def _fused_forward(x, step, qn, qp):
    return (torch.clamp(x.to(F32) / step, qn, qp).round() * step).to(x.dtype)


def _fused_backward(grad, x, step, qn, qp):
    """d/dx = 1 strictly inside (Qn, Qp), else 0; d/ds = round(u) - u inside, Qn / Qp outside."""
    u = x.to(F32) / step
    grad = grad.to(F32)
    inside = (u > qn) & (u < qp)
    grad_x = torch.where(inside, grad, torch.zeros_like(grad))
    ds = torch.clamp(u, qn, qp).round() - torch.where(inside, u, torch.zeros_like(u))
    grad_s = (grad * ds).sum_to_size(step.shape)
    return grad_x.to(x.dtype), grad_s


def _compiled(fn):
    """torch.compile'd on first CUDA use (one fused kernel each way); eager elsewhere.

    Shapes are dynamic and Qn/Qp travel as tensors, so one graph serves every layer and bit-width.
    Set MPQ_LSQ_COMPILE=0 to keep CUDA eager too.
    """
    cache = {}

    def call(*args):
        if "fn" not in cache:
            cache["fn"] = torch.compile(fn, dynamic=True)
        return cache["fn"](*args)
    return call


def _codes_forward(x, step, qn, qp):
    return torch.clamp(x.to(F32) / step, qn, qp).round()


def _codes_backward(grad, x, step, qn, qp):
    """The LSQ backward divided by s: what the codes carry when the scale is applied detached."""
    grad_x, grad_s = _fused_backward(grad, x.to(F32), step, qn, qp)
    return (grad_x / step).to(x.dtype), grad_s / step


_compiled_forward, _compiled_backward = _compiled(_fused_forward), _compiled(_fused_backward)
_compiled_codes_forward, _compiled_codes_backward = _compiled(_codes_forward), _compiled(_codes_backward)


def _use_compiled(x: torch.Tensor) -> bool:
    return (x.is_cuda and os.environ.get("MPQ_LSQ_COMPILE", "1") != "0"
            and not torch.compiler.is_compiling())


_hardtanh_backward = torch.ops.aten.hardtanh_backward


def _eager_forward(x, step, qn, qp):
    """Forward in two fresh tensors: u = x / s (saved for the backward) and the output.

    Eager CPU pays for every element-wise pass and, more, for every fresh tensor (page faults on
    large allocations) and for boolean masks (where/masked_fill/bool-mul run several times slower
    than float arithmetic). So no mask is built: the backward derives it from u with
    hardtanh_backward, whose "strictly inside (lo, hi)" rule is exactly LSQ's.
    """
    u = x.to(F32) / step
    out = torch.clamp(u, qn, qp).round_().mul_(step)
    return out.to(x.dtype), u


def _eager_backward(grad, u, step, qn, qp):
    """grad_x = grad inside (Qn, Qp), else 0. ds = round(c) - [c if inside] with c = clamp(u):
    round(u) - u inside and Qn / Qp outside, the LSQ step gradient."""
    grad = grad.to(F32)
    grad_x = _hardtanh_backward(grad, u, qn, qp)
    c = torch.clamp(u, qn, qp)
    ds = _hardtanh_backward(c, u, qn, qp)
    ds = torch.sub(c.round_(), ds, out=ds).mul_(grad)
    grad_s = ds.sum(dtype=torch.float32) if step.dim() == 0 else ds.float().sum_to_size(step.shape)
    return grad_x, grad_s


class _FusedLsq(torch.autograd.Function):
    """LSQ forward and its closed-form backward in one Function."""

    @staticmethod
    def forward(ctx, x, step, qn, qp, g):
        ctx.qn, ctx.qp, ctx.g, ctx.x_dtype = qn, qp, g, x.dtype
        ctx.compiled = _use_compiled(x)
        if ctx.compiled:   # one generated kernel each way; only x and s are saved
            ctx.save_for_backward(x, step)
            return _compiled_forward(x, step, _bound(qn, x), _bound(qp, x))
        out, u = _eager_forward(x, step, qn, qp)
        ctx.save_for_backward(u, step)
        return out

    @staticmethod
    def backward(ctx, grad):
        if ctx.compiled:
            x, step = ctx.saved_tensors
            grad_x, grad_s = _compiled_backward(grad, x, step, _bound(ctx.qn, x), _bound(ctx.qp, x))
        else:
            u, step = ctx.saved_tensors
            grad_x, grad_s = _eager_backward(grad, u, step, ctx.qn, ctx.qp)
        if ctx.g != 1.0:
            grad_s = grad_s * ctx.g
        return grad_x.to(ctx.x_dtype), grad_s.to(step.dtype), None, None, None


class _LsqCodes(torch.autograd.Function):
    """lsq_codes_ste with the grad-scale trick in one Function: the LSQ backward divided by s."""

    @staticmethod
    def forward(ctx, x, step, qn, qp, g):
        ctx.qn, ctx.qp, ctx.g, ctx.x_dtype = qn, qp, g, x.dtype
        ctx.compiled = _use_compiled(x)
        if ctx.compiled:
            ctx.save_for_backward(x, step)
            return _compiled_codes_forward(x, step, _bound(qn, x), _bound(qp, x))
        u = x.to(F32) / step
        ctx.save_for_backward(u, step)
        return torch.clamp(u, qn, qp).round_()

    @staticmethod
    def backward(ctx, grad):
        if ctx.compiled:
            x, step = ctx.saved_tensors
            grad_x, grad_s = _compiled_codes_backward(grad, x, step, _bound(ctx.qn, x), _bound(ctx.qp, x))
        else:
            u, step = ctx.saved_tensors
            grad_x, grad_s = _eager_backward(grad, u, step, ctx.qn, ctx.qp)
            grad_x, grad_s = grad_x.div_(step), grad_s / step
        if ctx.g != 1.0:
            grad_s = grad_s * ctx.g
        return grad_x.to(ctx.x_dtype), grad_s.to(step.dtype), None, None, None


def _bound(value: int, like: torch.Tensor) -> torch.Tensor:
    return _bound_on(float(value), like.device)


@functools.lru_cache(maxsize=64)
def _bound_on(value: float, device: torch.device) -> torch.Tensor:
    return torch.tensor(value, device=device)


def lsq_fake_quant_fused(x: torch.Tensor, step: torch.Tensor, qn: int, qp: int,
                         grad_scale: float = 1.0) -> torch.Tensor:
    """Same values and gradients as lsq_fake_quant(x, scale_grad(step, grad_scale), qn, qp).

    `step` is a scalar or broadcasts against x (per-channel: shape (C, 1, ...)).
    """
    return _FusedLsq.apply(x, step.to(F32), qn, qp, float(grad_scale))


def lsq_codes_fused(x: torch.Tensor, step: torch.Tensor, qn: int, qp: int,
                    grad_scale: float = 1.0) -> torch.Tensor:
    """Same values and gradients as lsq_codes_ste(x, scale_grad(step, grad_scale), qn, qp)."""
    return _LsqCodes.apply(x, step.to(F32), qn, qp, float(grad_scale))
