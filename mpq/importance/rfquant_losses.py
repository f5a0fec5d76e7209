"""The extra loss terms of an RFQuant random subnet (specs/rfquant.md section 3).

IDM aligns the BN outputs of layers sampled at their lowest bit with the max subnet's; QE pulls
weights onto the coarse grid they share with the lowest bit (oscillation dampening); ARWD cancels
SGD weight decay on the in-range weights of 2-bit layers.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..quant import QuantConv2d, searchable_layers


class BnOutputTap:
    """Forward hooks on the BN after each searchable layer, for information distortion mitigation.

    `record()`: the next forward stores detached copies of every BN output (the max subnet's, the
    targets). `align(layers)`: the next forward adds the mean-squared error against those targets
    for the named layers only. Copies are needed because in-place ReLUs overwrite BN outputs.
    """

    def __init__(self, model: nn.Module):
        self.targets: dict[str, torch.Tensor] = {}
        self.terms: dict[str, torch.Tensor] = {}
        self.mode, self.chosen = None, frozenset()
        self._hooks = [model.get_submodule(bn).register_forward_hook(self._hook(layer))
                       for layer, bn in model.rfquant_bn_of.items()]

    def _hook(self, layer: str):
        def hook(module, inputs, out):
            if self.mode == "record":
                self.targets[layer] = out.detach().clone()
            elif self.mode == "align" and layer in self.chosen:
                # (out - T) is a new tensor, so a later in-place ReLU on `out` cannot break backward.
                self.terms[layer] = (out - self.targets[layer]).pow(2).mean()
        return hook

    def record(self) -> None:
        self.mode, self.targets = "record", {}

    def align(self, layers) -> None:
        self.mode, self.chosen, self.terms = "align", frozenset(layers), {}

    def loss(self) -> torch.Tensor | float:
        return sum(self.terms.values()) if self.terms else 0.0

    def off(self) -> None:
        self.mode, self.terms = None, {}

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self.off()
        self.targets = {}


def min_bit_layers(names, w_bits, w_lists) -> list[str]:
    """The layers sampled at their current minimum weight candidate (IDM takes part there)."""
    return [n for n, b, cands in zip(names, w_bits, w_lists) if b == cands[-1]]


def _clamped_weight(layer: QuantConv2d, bits: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(w clamped to the step's range with detached bounds, the detached step, Qn, Qp)."""
    q = layer.quan_w
    qn, qp = q.qrange(bits)
    step = q.step_for(bits).detach()
    if q.per_channel:
        step = step.view(-1, *([1] * (layer.weight.dim() - 1)))
    return torch.clamp(layer.weight, step * qn, step * qp), step, qn, qp


def qe_term(layer: QuantConv2d, bits: int, min_bits: int) -> torch.Tensor:
    """Squared distance of w to its quantised value, kept only on the grid shared with min_bits.

    Aggregation "kernel_mean": sum over output channels, mean over (in, kh, kw).
    """
    w_c, step, qn, qp = _clamped_weight(layer, bits)
    level = torch.clamp(layer.weight.detach() / step, qn, qp).round()
    q = level * step
    if bits > min_bits:
        ratio = 2 ** (bits - min_bits)
        cn, cp = layer.quan_w.qrange(min_bits)
        coarse = (torch.remainder(level, ratio) == 0) & (level >= cn * ratio) & (level <= cp * ratio)
        q = torch.where(coarse, q, w_c.detach())
    return (w_c - q).pow(2).sum(0).mean()


def arwd_term(layer: QuantConv2d, bits: int) -> torch.Tensor:
    """1/2 sum of the in-range (clamped) weights squared; the caller scales it by (arwd - wd)."""
    w_c, *_ = _clamped_weight(layer, bits)
    return 0.5 * w_c.pow(2).sum()


def qe_weight(iteration: int, start_iteration: int, last_iteration: int, lam_max: float = 0.1) -> float:
    """lambda(t) = lam_max - lam_max/2 (1 + cos(pi (t - t0) / (T - t0))): 0 at t0, lam_max at T."""
    span = max(1, last_iteration - start_iteration)
    t = min(max(iteration - start_iteration, 0), span)
    return lam_max - 0.5 * lam_max * (1 + math.cos(math.pi * t / span))


def subnet_regularisers(model: nn.Module, w_bits, w_lists, *, qe_lambda: float, arwd_coef: float):
    """lambda_QE * sum of QE terms + arwd_coef * sum of 2-bit ARWD terms, over searchable convs."""
    total = 0.0
    for (_, layer), bits, cands in zip(searchable_layers(model), w_bits, w_lists):
        if not isinstance(layer, QuantConv2d):
            continue
        if qe_lambda:
            total = total + qe_lambda * qe_term(layer, bits, cands[-1])
        if arwd_coef and bits == 2:
            total = total + arwd_coef * arwd_term(layer, bits)
    return total
