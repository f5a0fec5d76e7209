"""LSQ quantizer with one learnable step per candidate bit-width.

A single-bit LSQ is the same module with one candidate, so indicator training, the supernet and
QAT finetuning share one implementation (docs/methods/lsq.md). The kernels are in lsq_kernels,
the initial steps in range_init.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .base import Quantizer, check_bits, int_range, is_full_precision
from .lsq_kernels import (F32, lsq_codes_fused, lsq_codes_ste, lsq_fake_quant, lsq_fake_quant_fused,
                          lsq_integers, scale_grad)
from .range_init import check_input_sign, lsq_act_step, three_sigma_steps
from ..errors import InputError


class LsqQuantizer(Quantizer):
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
            raise InputError(f"quantizer kind must be 'weight' or 'act', not {kind!r}")
        if per_channel and kind != "weight":
            raise InputError("per-channel quantization is only supported for weights")
        if grad_scale_numel not in ("tensor", "per_sample"):
            raise InputError("grad_scale_numel must be 'tensor' or 'per_sample'")
        cands = sorted({int(b) for b in candidates}, reverse=True)
        for b in cands:
            check_bits(b)
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
            raise InputError(f"{bits}-bit is not a candidate of this quantizer (candidates {cands})")
        return cands.index(bits)

    def _check_bits(self, bits: int) -> None:
        super()._check_bits(bits)
        self.index_of(bits)

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
    def set_step(self, value, bits: int | None = None) -> None:
        """Set the step at `bits` (default: the active bit-width) and mark it initialised."""
        index = self.index_of(self.bits if bits is None else bits)
        if isinstance(value, torch.Tensor):
            self.step[index].copy_(value.to(self.step.dtype))
        else:
            self.step[index].fill_(value)
        self.init_state[index] = 1
        self._ready.add(index)

    @torch.no_grad()
    def init_weight_steps(self, weight: torch.Tensor) -> None:
        """3-sigma steps for every candidate (range_init.three_sigma_steps)."""
        cands = self.candidate_list
        for b, step in zip(cands, three_sigma_steps(weight, cands, self.per_channel)):
            self.set_step(step, b)

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
                check_input_sign(x, self.signed)
                self.set_step(lsq_act_step(x, self.qrange(bits)[1]), bits)
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
