"""N2UQ: learnable non-uniform input thresholds with uniform output levels (docs/methods/n2uq.md).

The activation quantizer (LTQ) learns where its thresholds sit but always emits the integers
0..K times one scale, so the hardware sees a uniform grid. Its backward is the generalised STE:
the gradient of the piecewise-linear surrogate F whose rounding is the forward. Weights use the
L1-scaled quantizer with no zero level. Per-layer bits come from the policy. Both quantizers
compute in fp32 under autocast and expose `codes_and_scale` (exact integer codes and the scale).
"""
from __future__ import annotations

import torch
from torch import nn

from .convert import searchable_layers
from .base import Quantizer, int_range, is_full_precision
from ..errors import InputError

EPS = 1e-3


def fp32_compute(x: torch.Tensor):
    """Autocast off: scaling, thresholds and rounding must see fp32, or bf16 moves the codes."""
    return torch.autocast(x.device.type, enabled=False)


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


class _LtqCodes(torch.autograd.Function):
    """Forward: the code #{i : scale1·x > T_i} in 0..K (fp32). Backward: G-STE, the gradient of F/δ.

    The output scale scale2·δ is applied outside, so autograd gives scale2 its gradient x_q.
    """

    @staticmethod
    def forward(ctx, x, scale1, start, widths, eps):
        a, d = _edges(scale1, start, widths, eps)
        u = scale1 * x.float()
        ctx.save_for_backward(x, scale1, start, widths)
        ctx.eps = eps
        return torch.bucketize(u, d[:-1] + a / 2).float()

    @staticmethod
    def backward(ctx, grad):
        x, scale1, start, widths = ctx.saved_tensors
        eps, K = ctx.eps, widths.numel()
        a, d = _edges(scale1, start, widths, eps)
        xf = x.float()
        u = scale1 * xf
        seg = torch.bucketize(u, d, right=True)            # d_{k-1} <= u < d_k  ->  k
        inside = (seg >= 1) & (seg <= K)
        k = (seg.clamp(1, K) - 1).flatten()
        a_k, d_prev = a[k].view_as(u), d[k].view_as(u)
        g = grad.float()
        zero = torch.zeros_like(u)
        grad_u = torch.where(inside, g / a_k, zero)
        own = torch.where(inside, -g * (u - d_prev) / a_k.square(), zero)
        shift = torch.zeros(K, device=u.device).index_add_(0, k, -grad_u.flatten())
        later = shift.flip(0).cumsum(0).flip(0) - shift    # Σ_{k > j} of the shift terms
        own_sum = torch.zeros(K, device=u.device).index_add_(0, k, own.flatten())
        grad_widths = (own_sum + later) * (widths > eps)
        return ((grad_u * scale1).to(x.dtype), (grad_u * xf).sum().reshape(scale1.shape),
                shift.sum().reshape(start.shape), grad_widths.to(widths.dtype), None)


class LtqQuantizer(Quantizer):
    """Learnable-threshold activation quantizer at a fixed bit-width (K = 2^b - 1 intervals).

    Scalars per layer, initialised as a uniform quantizer on [0, 2].
    """

    def __init__(self, bits: int, eps: float = EPS):
        super().__init__()
        _, levels = int_range(bits, signed=False)      # refuses an unsupported bit-width
        self.levels_bits, self.bits, self.eps = bits, bits, eps
        self.scale1 = nn.Parameter(torch.tensor(1.0))
        self.start = nn.Parameter(torch.tensor(0.0))
        self.widths = nn.Parameter(torch.full((levels,), 2.0 / levels))
        self.scale2 = nn.Parameter(torch.tensor(1.0))

    def _check_bits(self, bits: int) -> None:
        super()._check_bits(bits)
        if bits != self.levels_bits:
            raise InputError(f"this LTQ has {self.widths.numel()} intervals ({self.levels_bits}-bit); "
                             f"it cannot run at {bits} bits")

    def codes_and_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(codes 0..K as fp32 with the G-STE gradient, scalar scale scale2·2/K), computed in
        fp32; None at full precision. Code 0 is the value 0, so zero padding stays exact."""
        if is_full_precision(self.bits):
            return None
        with fp32_compute(x):
            codes = _LtqCodes.apply(x, self.scale1, self.start, self.widths, self.eps)
            return codes, self.scale2 * (2.0 / self.widths.numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if is_full_precision(self.bits):
            return x
        codes, scale = self.codes_and_scale(x)
        return codes * scale

    def extra_repr(self) -> str:
        return f"bits={self.bits}, intervals={self.widths.numel()}"


def l1_weight_quant(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel s_c = γ_n·mean|W_c|, levels ±1/(2^n−1), ±3/(2^n−1), … ±1 (no zero).

    The value is s_c·Q; the gradient is that of W/s_c (1/s_c, no clipping mask).
    """
    codes, scale = l1_weight_codes(w, bits)
    return codes * scale


def l1_weight_codes(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(odd integer codes in [-(2^n-1), 2^n-1] as fp32, per-channel scale s_c/(2^n-1)).

    codes * scale is the quantized weight s_c·Q. The reference's straight-through path is W/s_c
    (gradient 1/s_c, no clipping mask), so the codes carry W/(s_c·scale) as their gradient path.
    Computed in fp32 under autocast, so the codes do not depend on the autocast dtype.
    """
    _, levels = int_range(bits, signed=False)
    gamma = levels / -int_range(bits, signed=True)[0]     # (2^n - 1) / 2^(n-1)
    shape = (-1,) + (1,) * (w.dim() - 1)
    with fp32_compute(w):
        wf = w.float()
        s_c = (gamma * wf.detach().abs().flatten(1).mean(1)).clamp_min(1e-12).view(shape)
        scale = s_c / levels
        unit = (wf.detach() / s_c).clamp(-1, 1)              # W̃ = clip(W / s_c, -1, 1)
        odd = 2 * torch.round((unit + 1) * levels / 2) - levels
        path = wf / (s_c * scale)
        return odd + (path - path.detach()), scale


class L1WeightQuantizer(Quantizer):
    """The N2UQ weight quantizer; stateless, so any bit-width 2..8 works."""

    def __init__(self, bits: int | None):
        super().__init__()
        self.set_bits(bits)

    def codes_and_scale(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(odd integer codes as fp32, per-output-channel scale s_c/(2^n-1) shaped (C, 1, ...));
        None at full precision."""
        return None if is_full_precision(self.bits) else l1_weight_codes(w, self.bits)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w if is_full_precision(self.bits) else l1_weight_quant(w, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def use_n2uq_quantizers(model: nn.Module) -> None:
    """Swap every searchable layer's quantizers for N2UQ ones at that layer's current bits.

    An LTQ's output is in [0, 2], so a layer with a signed input keeps its LSQ activation
    quantizer, unless it is one of the model's `rprelu_layers` (mpq.models.rprelu): there the
    reference puts the LTQ after a learnable shift and PReLU, whose output it learns to place in
    the LTQ's range. The fixed stem and classifier stay W8A8 LSQ (the project convention).
    """
    signed = set(getattr(model, "signed_inputs", ())) - set(getattr(model, "rprelu_layers", ()))
    for name, layer in searchable_layers(model):
        w_bits, a_bits = layer.bits
        layer.quan_w = L1WeightQuantizer(w_bits).to(layer.weight.device)
        if layer.quan_a is not None and name not in signed and not is_full_precision(a_bits):
            layer.quan_a = LtqQuantizer(a_bits).to(layer.weight.device)
