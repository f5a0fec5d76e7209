"""LSQ quantizer with one learnable step per candidate bit-width.

A single-bit LSQ is the same module with one candidate, so indicator training, the supernet and
QAT finetuning share one implementation (specs/limpq.md section 1).
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn


def int_range(bits: int, signed: bool, symmetric: bool = False) -> tuple[int, int]:
    """Integer grid [Qn, Qp] for a bit-width (specs/limpq.md section 1 table)."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bit-width {bits} is not supported; use 2..8 (None or 32 for full precision)")
    if not signed:
        return 0, 2**bits - 1
    qp = 2 ** (bits - 1) - 1
    return (-qp if symmetric else -qp - 1), qp


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity gradient in the backward pass."""
    return (x.round() - x).detach() + x


def scale_grad(x: torch.Tensor, g: float) -> torch.Tensor:
    """Same value as x, gradient multiplied by g."""
    xg = x * g
    return (x - xg).detach() + xg


def lsq_fake_quant(x: torch.Tensor, step: torch.Tensor, qn: int, qp: int) -> torch.Tensor:
    """Reference LSQ: clamp(x/s) before rounding, STE round; autograd yields the LSQ gradients."""
    return round_ste(torch.clamp(x / step, qn, qp)) * step


def _is_full_precision(bits) -> bool:
    return bits is None or bits >= 32


class LsqQuantizer(nn.Module):
    """Per-tensor (or per-output-channel) LSQ with a step vector indexed by candidate bit.

    `candidates` are kept in descending order and stored as a buffer together with `init_state`,
    so a checkpoint says which step belongs to which bit and which steps were initialised.
    """

    def __init__(self, candidates, kind: str, signed: bool, *, grad_scale: bool = True,
                 grad_scale_numel: str = "tensor", per_channel: bool = False, channels: int = 1,
                 clamp_step: tuple[float, float] | None = None, symmetric: bool = False):
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
        shape = (len(cands), channels) if per_channel else (len(cands),)
        self.step = nn.Parameter(torch.ones(shape))
        self.register_buffer("candidates", torch.tensor(cands, dtype=torch.long))
        self.register_buffer("init_state", torch.zeros(len(cands), dtype=torch.uint8))
        self.bits: int | None = cands[0]

    # --- bit selection -------------------------------------------------------------------------
    @property
    def candidate_list(self) -> list[int]:
        return [int(b) for b in self.candidates.tolist()]

    def index_of(self, bits: int) -> int:
        cands = self.candidate_list
        if bits not in cands:
            raise ValueError(f"{bits}-bit is not a candidate of this quantizer (candidates {cands})")
        return cands.index(bits)

    def set_bits(self, bits: int | None) -> None:
        if not _is_full_precision(bits):
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

    @torch.no_grad()
    def _init_act_step(self, x: torch.Tensor, index: int, bits: int) -> None:
        """Lazy activation init 2*mean|x|/sqrt(Qp), averaged over DDP ranks."""
        if not self.signed:
            lo = x.min().item()
            if lo < 0:
                raise ValueError(f"activation quantizer declared unsigned got a negative input "
                                 f"(min {lo:.4g}); mark the layer's input as signed in the model's "
                                 f"signed_inputs")
        value = 2 * x.detach().abs().mean() / math.sqrt(self.qrange(bits)[1])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(value)
            value /= dist.get_world_size()
        self.step[index].fill_(max(value.item(), 1e-8))
        self.init_state[index] = 1

    # --- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bits = self.bits
        if _is_full_precision(bits):
            return x
        index = self.index_of(bits)
        if not self.init_state[index]:
            if self.kind == "weight":
                self.init_weight_steps(x)
            elif self.training:
                self._init_act_step(x, index, bits)
            else:
                raise RuntimeError("activation step used before initialisation: run at least one "
                                   "training batch (or calibration) at this bit-width first")
        qn, qp = self.qrange(bits)
        step = self.step_for(bits)
        if self.grad_scale:
            numel = x.numel() if self.grad_scale_numel == "tensor" else x[0].numel()
            if self.per_channel:
                numel //= x.shape[0]
            step = scale_grad(step, 1.0 / math.sqrt(qp * numel))
        if self.per_channel:
            step = step.view(-1, *([1] * (x.dim() - 1)))
        return lsq_fake_quant(x, step, qn, qp)

    def extra_repr(self) -> str:
        return (f"kind={self.kind}, signed={self.signed}, candidates={self.candidate_list}, "
                f"bits={self.bits}, per_channel={self.per_channel}, grad_scale={self.grad_scale}")
