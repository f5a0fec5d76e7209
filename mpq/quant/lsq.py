"""LSQ quantizer with one learnable step per candidate bit-width.

A single-bit LSQ is the same module with one candidate, so indicator training, the supernet and
QAT finetuning share one implementation (docs/methods/lsq.md).

Every kernel computes x/s, the clamp, the rounding and the integer codes in float32 whatever
the input dtype: a bf16 input (under autocast) divided in bf16 lands on the wrong integer for a
few percent of the elements at 6 bits. The fake-quant output goes back in the input's dtype.
"""
from __future__ import annotations

import functools
import math
import os

import torch
import torch.distributed as dist
from torch import nn


BIT_RANGE = (2, 8)   # the integer bit-widths the quantizers implement; every range check uses it


def supported_bits(bits) -> bool:
    """Whether `bits` is an integer bit-width within BIT_RANGE."""
    return BIT_RANGE[0] <= bits <= BIT_RANGE[1]


def bit_range_text() -> str:
    return f"{BIT_RANGE[0]}..{BIT_RANGE[1]}"


def int_range(bits: int, signed: bool, symmetric: bool = False) -> tuple[int, int]:
    """Integer grid [Qn, Qp] for a bit-width (docs/methods/lsq.md)."""
    if not supported_bits(bits):
        raise ValueError(f"bit-width {bits} is not supported; use {bit_range_text()} "
                         f"(None or 32 for full precision)")
    if not signed:
        return 0, 2**bits - 1
    qp = 2 ** (bits - 1) - 1
    return (-qp if symmetric else -qp - 1), qp


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


F32 = torch.float32


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


def is_full_precision(bits) -> bool:
    """None or >= 32 bits means the tensor passes through unquantized."""
    return bits is None or bits >= 32


class LsqQuantizer(nn.Module):
    """Per-tensor (or per-output-channel) LSQ with a step vector indexed by candidate bit.

    `candidates` are kept in descending order and stored as a buffer together with `init_state`,
    so a checkpoint says which step belongs to which bit and which steps were initialised.
    """

    def __init__(self, candidates, kind: str, signed: bool, *, grad_scale: bool = True,
                 grad_scale_numel: str = "tensor", per_channel: bool = False, channels: int = 1,
                 clamp_step: tuple[float, float] | None = None, symmetric: bool = False,
                 fused: bool = True):
        super().__init__()
        if kind not in ("weight", "act"):
            raise ValueError(f"quantizer kind must be 'weight' or 'act', not {kind!r}")
        if per_channel and kind != "weight":
            raise ValueError("per-channel quantization is only supported for weights")
        if grad_scale_numel not in ("tensor", "per_sample"):
            raise ValueError("grad_scale_numel must be 'tensor' or 'per_sample'")
        cands = sorted({int(b) for b in candidates}, reverse=True)
        for b in cands:
            int_range(b, signed)
        self.kind, self.signed, self.symmetric = kind, signed, symmetric
        self.grad_scale, self.grad_scale_numel = grad_scale, grad_scale_numel
        self.per_channel, self.clamp_step = per_channel, clamp_step
        self.fused = fused
        shape = (len(cands), channels) if per_channel else (len(cands),)
        self.step = nn.Parameter(torch.ones(shape))
        self.register_buffer("candidates", torch.tensor(cands, dtype=torch.long))
        self.register_buffer("init_state", torch.zeros(len(cands), dtype=torch.uint8))
        self.bits: int | None = cands[0]
        # Python mirrors of the two buffers: reading a CUDA buffer in forward would stall the
        # GPU once per quantizer per step. Refreshed whenever a state dict is loaded.
        self._cands: list[int] = cands
        self._ready: set[int] = set()

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._cands = [int(b) for b in self.candidates.tolist()]
        self._ready = set()

    def is_initialised(self, index: int) -> bool:
        """Whether the step at candidate `index` has been initialised (cached once true)."""
        if index in self._ready:
            return True
        if bool(self.init_state[index]):
            self._ready.add(index)
            return True
        return False

    def config(self) -> dict:
        """Constructor arguments that rebuild an equivalent quantizer (for subclasses and copies)."""
        return dict(candidates=self.candidate_list, kind=self.kind, signed=self.signed,
                    grad_scale=self.grad_scale, grad_scale_numel=self.grad_scale_numel,
                    per_channel=self.per_channel, channels=self.step.shape[-1] if self.per_channel else 1,
                    clamp_step=self.clamp_step, symmetric=self.symmetric, fused=self.fused)

    # --- bit selection -------------------------------------------------------------------------
    @property
    def candidate_list(self) -> list[int]:
        return list(self._cands)

    def index_of(self, bits: int) -> int:
        cands = self._cands
        if bits not in cands:
            raise ValueError(f"{bits}-bit is not a candidate of this quantizer (candidates {cands})")
        return cands.index(bits)

    def set_bits(self, bits: int | None) -> None:
        if not is_full_precision(bits):
            self.index_of(bits)
        self.bits = bits

    def qrange(self, bits: int | None = None) -> tuple[int, int]:
        return int_range(self.bits if bits is None else bits, self.signed, self.symmetric)

    def step_for(self, bits: int) -> torch.Tensor:
        """The step (per-tensor: a scalar; per-channel: one per output channel) at `bits`."""
        s = self.step[self.index_of(bits)]
        if self.clamp_step is not None:
            s = s.clamp(*self.clamp_step)
        return s

    # --- initialisation ------------------------------------------------------------------------
    @torch.no_grad()
    def init_weight_steps(self, weight: torch.Tensor) -> None:
        """3-sigma rule for every candidate: max(|mu-3sd|, |mu+3sd|) / 2^(b-1)."""
        if self.per_channel:
            flat = weight.detach().flatten(1)
            mu, sd = flat.mean(1), flat.std(1)
        else:
            mu, sd = weight.detach().mean(), weight.detach().std()
        spread = torch.maximum((mu - 3 * sd).abs(), (mu + 3 * sd).abs()).clamp_min(1e-8)
        for i, b in enumerate(self.candidate_list):
            self.step[i].copy_(spread / 2 ** (b - 1))
            self.init_state[i] = 1
            self._ready.add(i)

    def check_input_sign(self, x: torch.Tensor) -> None:
        """An unsigned activation quantizer must never see a negative input at initialisation."""
        if not self.signed:
            lo = x.min().item()
            if lo < 0:
                raise ValueError(f"activation quantizer declared unsigned got a negative input "
                                 f"(min {lo:.4g}); mark the layer's input as signed in the model's "
                                 f"signed_inputs")

    @torch.no_grad()
    def _init_act_step(self, x: torch.Tensor, index: int, bits: int) -> None:
        """Lazy activation init 2*mean|x|/sqrt(Qp), averaged over DDP ranks."""
        self.check_input_sign(x)
        value = 2 * x.detach().abs().mean() / math.sqrt(self.qrange(bits)[1])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(value)
            value /= dist.get_world_size()
        self.step[index].fill_(max(value.item(), 1e-8))
        self.init_state[index] = 1
        self._ready.add(index)

    # --- forward -------------------------------------------------------------------------------
    def prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int, float]:
        """(step broadcastable against x, Qn, Qp, grad-scale factor) at the active bit-width,
        initialising the step first if needed."""
        bits = self.bits
        index = self.index_of(bits)
        if not self.is_initialised(index):
            if self.kind == "weight":
                self.init_weight_steps(x)
            elif self.training:
                self._init_act_step(x, index, bits)
            else:
                raise RuntimeError("activation step used before initialisation: run at least one "
                                   "training batch (or calibration) at this bit-width first")
        qn, qp = self.qrange(bits)
        step = self.step_for(bits)
        g = 1.0
        if self.grad_scale:
            numel = x.numel() if self.grad_scale_numel == "tensor" else x[0].numel()
            if self.per_channel:
                numel //= x.shape[0]
            g = 1.0 / math.sqrt(qp * numel)
        if self.per_channel:
            step = step.view(-1, *([1] * (x.dim() - 1)))
        return step, qn, qp, g

    def fake_quant(self, x: torch.Tensor, step: torch.Tensor, qn: int, qp: int, g: float) -> torch.Tensor:
        """The fused Function by default; `fused = False` selects the reference autograd graph."""
        if self.fused:
            return lsq_fake_quant_fused(x, step, qn, qp, g)
        return lsq_fake_quant(x, scale_grad(step, g) if g != 1.0 else step, qn, qp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if is_full_precision(self.bits):
            return x
        return self.fake_quant(x, *self.prepare(x))

    def codes_and_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The code-domain interface of mpq.quant.layers.CodeQuantizer: forward(x) equals
        scale * codes, values and gradients; the scale is detached and the codes carry the
        whole LSQ gradient to x and to the step (see lsq_codes_ste).

        None where codes cannot stand in for forward: full precision, or a subclass that
        changed forward without providing its own codes_and_scale (e.g. oscillation freezing).
        """
        if is_full_precision(self.bits) or not self._codes_match_forward():
            return None
        step, qn, qp, g = self.prepare(x)
        if self.fused:
            codes = lsq_codes_fused(x, step, qn, qp, g)
        else:
            codes = lsq_codes_ste(x, scale_grad(step, g) if g != 1.0 else step, qn, qp)
        return codes, step.detach().to(F32)

    def _codes_match_forward(self) -> bool:
        cls = type(self)
        return cls.forward is LsqQuantizer.forward or cls.codes_and_scale is not LsqQuantizer.codes_and_scale

    @torch.no_grad()
    def integer_codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """(codes, step, Qn, Qp) at the active bit-width, detached: what forward multiplies out."""
        step, qn, qp, _ = self.prepare(x)
        step = step.detach()
        return lsq_integers(x, step, qn, qp), step, qn, qp

    def extra_repr(self) -> str:
        return (f"kind={self.kind}, signed={self.signed}, candidates={self.candidate_list}, "
                f"bits={self.bits}, per_channel={self.per_channel}, grad_scale={self.grad_scale}")
