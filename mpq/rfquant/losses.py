"""The extra loss terms of an RFQuant random subnet (docs/methods/rfquant.md, supernet training).

IDM aligns the features of layers sampled at their lowest bit with the max subnet's; QE pulls
weights onto the coarse grid they share with the lowest bit (oscillation dampening); ARWD cancels
SGD weight decay on the in-range weights of 2-bit layers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..probe import probe_forward
from ..quant import QuantConv2d, SwitchableBatchNorm2d, searchable_layers
from ..errors import InputError

IDM_TARGETS = ("activation", "bn_output")
# Activations that follow a BN in the zoo's blocks (in place in the reference's models).
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.SiLU, nn.Hardswish, nn.GELU)


@dataclass(frozen=True)
class AlignPoint:
    """The output of the `call`-th call of `module` in one forward (a ReLU module may be reused)."""

    module: str
    call: int = 0


def _bn_modules(model: nn.Module) -> set[str]:
    """Names of the BN layers (a switchable BN counts once, its copies not at all)."""
    copies = {f"{n}.copies.{k}" for n, m in model.named_modules() if isinstance(m, SwitchableBatchNorm2d)
              for k in m.copies}
    return {n for n, m in model.named_modules()
            if isinstance(m, (nn.BatchNorm2d, SwitchableBatchNorm2d)) and n not in copies}


def _residual_block_ending_at(bn: str, modules: dict, bn_order: list[str]) -> str | None:
    """The residual block (a module with a `downsample` attribute, the ResNet convention) whose
    main path ends with `bn`, if any: the reference adds the shortcut onto that BN's output."""
    parts = bn.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        block = ".".join(parts[:cut])
        if not hasattr(modules[block], "downsample"):
            continue
        shortcut = f"{block}.downsample."
        if bn.startswith(shortcut):
            return None
        main_path = [n for n in bn_order if n.startswith(block + ".") and not n.startswith(shortcut)]
        return block if main_path and main_path[-1] == bn else None
    return None


def idm_alignment_points(model: nn.Module, bn_of: dict[str, str], image_size: int,
                         target: str = "activation") -> dict[str, AlignPoint]:
    """Per searchable layer, the tensor IDM aligns.

    'activation' (the reference's effective target): the reference hooks the BN output without
    copying it, so its blocks' in-place ops overwrite the stored tensor before the loss reads
    it. That makes the target the output of the activation fed by the BN, and for the last BN on
    a residual block's main path the block output (after the add and the ReLU); a BN whose output
    nothing modifies in place (a shortcut BN, MobileNetV2's projection BN) keeps its output.
    Here those points are found by one probe forward and hooked by name, with no aliasing.
    'bn_output': the BN output itself (pre-activation), as the paper describes the hook.
    """
    if target not in IDM_TARGETS:
        raise InputError(f"importance.rfquant.idm_target must be one of {IDM_TARGETS}, not {target!r}")
    if target == "bn_output":
        return {layer: AlignPoint(bn) for layer, bn in bn_of.items()}
    modules = dict(model.named_modules())
    calls, counts, hooks = [], {}, []   # (name, call index, first input, output) in completion order
    for name, module in modules.items():
        if name:
            def record(mod, inputs, out, name=name):
                counts[name] = counts.get(name, -1) + 1
                calls.append((name, counts[name], inputs[0] if inputs else None, out))
            hooks.append(module.register_forward_hook(record))
    param = next(model.parameters())
    probe_forward(model, torch.zeros(1, 3, image_size, image_size, device=param.device, dtype=param.dtype), hooks)
    bns = _bn_modules(model)
    bn_order = [name for name, k, _, _ in calls if name in bns and k == 0]
    points = {}
    for layer, bn in bn_of.items():
        at = max(i for i, c in enumerate(calls) if c[0] == bn)
        block = _residual_block_ending_at(bn, modules, bn_order)
        if block is not None:
            points[layer] = next(AlignPoint(n, k) for n, k, _, _ in calls[at + 1:] if n == block)
            continue
        out = calls[at][3]
        consumer = next(((n, k) for n, k, inp, _ in calls[at + 1:] if inp is out), None)
        if consumer is not None and isinstance(modules[consumer[0]], ACTIVATIONS):
            points[layer] = AlignPoint(*consumer)
        else:
            points[layer] = AlignPoint(bn)
    return points


class IdmTap:
    """Forward hooks at each searchable layer's IDM alignment point (information distortion
    mitigation).

    `record()`: the next forward stores detached copies of the aligned tensors (the max subnet's,
    the targets). `align(layers)`: the next forward adds the mean-squared error against those
    targets for the named layers only.
    """

    def __init__(self, model: nn.Module, target: str = "activation"):
        self.targets: dict[str, torch.Tensor] = {}
        self.terms: dict[str, torch.Tensor] = {}
        self.mode, self.chosen = None, frozenset()
        self.points = idm_alignment_points(model, model.rfquant_bn_of, model.rfquant_build["image_size"], target)
        by_module: dict[str, dict[int, str]] = {}
        for layer, point in self.points.items():
            by_module.setdefault(point.module, {})[point.call] = layer
        self._calls: dict[str, int] = {}
        self._hooks = [model.register_forward_pre_hook(lambda *_: self._calls.clear())]
        self._hooks += [model.get_submodule(name).register_forward_hook(self._hook(name, layers))
                        for name, layers in by_module.items()]

    def _hook(self, name: str, layers: dict[int, str]):
        def hook(module, inputs, out):
            call = self._calls[name] = self._calls.get(name, -1) + 1
            layer = layers.get(call)
            if layer is None:
                return
            if self.mode == "record":
                self.targets[layer] = out.detach().clone()
            elif self.mode == "align" and layer in self.chosen:
                # (out - T) is a new tensor, so a later in-place op on `out` cannot break backward.
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
