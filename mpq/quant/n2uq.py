"""N2UQ: learnable non-uniform input thresholds with uniform output levels (specs/n2uq.md).

The activation quantizer (LTQ) learns where its thresholds sit but always emits the integers
0..K times one scale, so the hardware sees a uniform grid. Its backward is the generalised STE:
the gradient of the piecewise-linear surrogate F whose rounding is the forward. Weights use the
L1-scaled quantizer with no zero level. Per-layer bits come from the policy.
"""
from __future__ import annotations

import torch
from torch import nn

from .convert import searchable_layers
from .lsq import is_full_precision

EPS = 1e-3


def _edges(scale1, start, widths, eps):
    """Clamped widths ā and the interval edges d_0..d_K."""
    a = torch.where(widths > eps, widths, torch.full_like(widths, eps))
    return a, torch.cat([start.reshape(1), start + torch.cumsum(a, 0)])


def ltq_surrogate(x, scale1, start, widths, scale2, eps: float = EPS):
    """scale2 * F(scale1 * x), F = δ Σ_k clamp((u - d_{k-1}) / ā_k, 0, 1): the G-STE function."""
    delta = 2.0 / widths.numel()
    a, d = _edges(scale1, start, widths, eps)
    u = (scale1 * x).unsqueeze(-1)
    return scale2 * delta * torch.clamp((u - d[:-1]) / a, 0, 1).sum(-1)


class _Ltq(torch.autograd.Function):
    """Forward: δ·#{thresholds below u}. Backward: the closed forms of spec section 3."""

    @staticmethod
    def forward(ctx, x, scale1, start, widths, scale2, eps):
        delta = 2.0 / widths.numel()
        a, d = _edges(scale1, start, widths, eps)
        u = scale1 * x.float()
        level = torch.bucketize(u, d[:-1] + a / 2)        # #{i : u > T_i}
        ctx.save_for_backward(x, scale1, start, widths, scale2)
        ctx.eps = eps
        return scale2 * delta * level

    @staticmethod
    def backward(ctx, grad):
        x, scale1, start, widths, scale2 = ctx.saved_tensors
        eps, K = ctx.eps, widths.numel()
        delta = 2.0 / K
        a, d = _edges(scale1, start, widths, eps)
        xf = x.float()
        u = scale1 * xf
        seg = torch.bucketize(u, d, right=True)            # d_{k-1} <= u < d_k  ->  k
        inside = (seg >= 1) & (seg <= K)
        k = (seg.clamp(1, K) - 1).flatten()
        a_k, d_prev = a[k].view_as(u), d[k].view_as(u)
        g = grad.float() * scale2
        zero = torch.zeros_like(u)
        slope = torch.where(inside, delta / a_k, zero)
        grad_u = g * slope
        own = torch.where(inside, -g * delta * (u - d_prev) / a_k.square(), zero)
        shift = torch.zeros(K, device=u.device).index_add_(0, k, -grad_u.flatten())
        later = shift.flip(0).cumsum(0).flip(0) - shift    # Σ_{k > j} of the shift terms
        own_sum = torch.zeros(K, device=u.device).index_add_(0, k, own.flatten())
        grad_widths = (own_sum + later) * (widths > eps)
        level = torch.bucketize(u, d[:-1] + a / 2)
        grad_scale2 = (grad.float() * delta * level).sum()
        return ((grad_u * scale1).to(x.dtype), (grad_u * xf).sum().reshape(scale1.shape),
                shift.sum().reshape(start.shape), grad_widths.to(widths.dtype),
                grad_scale2.reshape(scale2.shape), None)


class LtqQuantizer(nn.Module):
    """Learnable-threshold activation quantizer at a fixed bit-width (K = 2^b - 1 intervals).

    Scalars per layer, initialised as a uniform quantizer on [0, 2] (spec section 2).
    """

    def __init__(self, bits: int, eps: float = EPS):
        super().__init__()
        if not 2 <= bits <= 8:
            raise ValueError(f"N2UQ activation bit-width {bits} is not supported; use 2..8")
        levels = 2**bits - 1
        self.levels_bits, self.bits, self.eps = bits, bits, eps
        self.scale1 = nn.Parameter(torch.tensor(1.0))
        self.start = nn.Parameter(torch.tensor(0.0))
        self.widths = nn.Parameter(torch.full((levels,), 2.0 / levels))
        self.scale2 = nn.Parameter(torch.tensor(1.0))

    def set_bits(self, bits: int | None) -> None:
        if not is_full_precision(bits) and bits != self.levels_bits:
            raise ValueError(f"this LTQ has {self.widths.numel()} intervals ({self.levels_bits}-bit); "
                             f"it cannot run at {bits} bits")
        self.bits = bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if is_full_precision(self.bits):
            return x
        return _Ltq.apply(x, self.scale1, self.start, self.widths, self.scale2, self.eps)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, intervals={self.widths.numel()}"


def l1_weight_quant(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel s_c = γ_n·mean|W_c|, levels ±1/(2^n−1), ±3/(2^n−1), … ±1 (no zero).

    The value is s_c·Q; the gradient is that of W/s_c (1/s_c, no clipping mask), spec section 4.
    """
    levels = 2**bits - 1
    gamma = levels / 2 ** (bits - 1)
    shape = (-1,) + (1,) * (w.dim() - 1)
    scale = (gamma * w.detach().abs().flatten(1).mean(1)).clamp_min(1e-12).view(shape)
    scaled = w / scale
    q = 2 * torch.round((scaled.detach().clamp(-1, 1) + 1) * levels / 2) / levels - 1
    return scaled + (scale * q - scaled).detach()


class L1WeightQuantizer(nn.Module):
    """The N2UQ weight quantizer; stateless, so any bit-width 2..8 works."""

    def __init__(self, bits: int | None):
        super().__init__()
        self.set_bits(bits)

    def set_bits(self, bits: int | None) -> None:
        if not is_full_precision(bits) and not 2 <= bits <= 8:
            raise ValueError(f"N2UQ weight bit-width {bits} is not supported; use 2..8")
        self.bits = bits

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w if is_full_precision(self.bits) else l1_weight_quant(w, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def use_n2uq_quantizers(model: nn.Module) -> None:
    """Swap every searchable layer's quantizers for N2UQ ones at that layer's current bits.

    Layers with a signed input keep their LSQ activation quantizer: an LTQ's output is in [0, 2]
    and would drop the negative half (the reference puts an RPReLU in front instead). The fixed
    stem and classifier stay W8A8 LSQ (the project convention, spec section 6).
    """
    signed = set(getattr(model, "signed_inputs", ()))
    for name, layer in searchable_layers(model):
        w_bits, a_bits = layer.bits
        layer.quan_w = L1WeightQuantizer(w_bits).to(layer.weight.device)
        if layer.quan_a is not None and name not in signed and not is_full_precision(a_bits):
            layer.quan_a = LtqQuantizer(a_bits).to(layer.weight.device)
