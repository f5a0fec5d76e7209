"""Turn a float model into a quantized one in place, and set its bits from outside.

The stem (first conv) and the classifier (last Linear) are fixed layers; every other Conv2d and
Linear is searchable, in module registration order (docs/methods/README.md, "Searchable layers").
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..probe import probe_forward
from .layers import QuantConv2d, QuantLinear
from .lsq import LsqQuantizer
from .switchable_bn import SwitchableBatchNorm2d, bn_key
from ..errors import InputError
from ..config import section_defaults

# The schema's quant.fixed_layers (stem, classifier), for callers that give none.
DEFAULT_FIXED_BITS = tuple(tuple(section_defaults("quant")["fixed_layers"][end]) for end in ("first", "last"))


def split_layers(model: nn.Module) -> tuple[str, list[str], str]:
    """(stem, searchable, classifier) names: first conv, every other conv/linear, last Linear."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not convs or not linears:
        raise InputError("model needs at least one Conv2d (stem) and one Linear (classifier)")
    stem, classifier = convs[0], linears[-1]
    return stem, [n for n in names if n not in (stem, classifier)], classifier


@torch.no_grad()
def conv_bn_pairs(model: nn.Module, image_size: int, in_chans: int = 3) -> dict[str, str]:
    """Bind each BN to the conv whose output it normalises, by following real tensors."""
    produced, pairs, keep, hooks = {}, {}, [], []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            def after_conv(mod, inp, out, name=name):
                produced[id(out)] = name
                keep.append(out)
            hooks.append(m.register_forward_hook(after_conv))
        elif isinstance(m, (nn.BatchNorm2d, SwitchableBatchNorm2d)):
            def before_bn(mod, inp, name=name):
                src = produced.get(id(inp[0]))
                if src is not None:
                    pairs[src] = name
            hooks.append(m.register_forward_pre_hook(before_bn))
    param = next(model.parameters())
    probe_forward(model, torch.zeros(1, in_chans, image_size, image_size, device=param.device,
                                      dtype=param.dtype), hooks)
    return pairs


def _per_layer(value, names: Sequence[str], what: str) -> list:
    """Accept one candidate list for every layer or one list per layer."""
    if value and isinstance(value[0], (list, tuple)):
        if len(value) != len(names):
            raise InputError(f"{what}: got {len(value)} per-layer lists for {len(names)} searchable layers")
        return [list(v) for v in value]
    return [list(value) for _ in names]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where the submodule called `name` (dotted) sits."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _wrap(layer, quan_w, quan_a):
    cls = QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear
    return cls(layer, quan_w, quan_a)


def lsq_options(quant_cfg: dict) -> dict:
    """The LSQ keyword arguments of convert_model that the config's `quant` section sets."""
    return {"grad_scale": quant_cfg["grad_scale"], "grad_scale_numel": quant_cfg["grad_scale_numel"]}


def convert_model(model: nn.Module, *, image_size: int, weight_candidates, act_candidates,
                  fixed_bits=DEFAULT_FIXED_BITS, switchable_bn: str | None = None,
                  grad_scale: bool = True, grad_scale_numel: str = "tensor",
                  clamp_step: tuple[float, float] | None = None,
                  weight_per_channel: bool = False) -> nn.Module:
    """Wrap every conv/linear with LSQ quantizers, in place.

    weight_candidates / act_candidates: one candidate list for all searchable layers, or a list of
    lists (one per searchable layer, e.g. the single bit of a policy). `fixed_bits` is
    ((stem_w, stem_a), (fc_w, fc_a)); a None bit keeps that tensor in full precision. The stem's
    input (the image) is never fake-quantized. `switchable_bn` = 'bit' | 'pair' | None replaces each
    BN after a searchable conv with one copy per candidate bit or (w, a) pair.
    """
    if getattr(model, "mpq_searchable", None) is not None:
        raise InputError("model is already quantized")
    stem, searchable, classifier = split_layers(model)
    bn_of = conv_bn_pairs(model, image_size) if switchable_bn else {}
    w_cands = _per_layer(weight_candidates, searchable, "weight_candidates")
    a_cands = _per_layer(act_candidates, searchable, "act_candidates")
    signed_inputs = set(getattr(model, "signed_inputs", ()))
    common = dict(grad_scale=grad_scale, grad_scale_numel=grad_scale_numel, clamp_step=clamp_step)

    def weight_q(layer, cands):
        return LsqQuantizer(cands, "weight", signed=True, per_channel=weight_per_channel,
                            channels=layer.weight.shape[0], **common)

    modules = dict(model.named_modules())
    for name, wc, ac in zip(searchable, w_cands, a_cands):
        layer = modules[name]
        qw = weight_q(layer, wc)
        qw.init_weight_steps(layer.weight)
        qa = LsqQuantizer(ac, "act", signed=name in signed_inputs, **common)
        replace_module(model, name, _wrap(layer, qw, qa))
        if switchable_bn and name in bn_of:
            keys = sorted({bn_key(w, a, switchable_bn) for w in wc for a in ac},
                          key=lambda k: [-int(p) for p in k.split("_")])
            replace_module(model, bn_of[name], SwitchableBatchNorm2d(modules[bn_of[name]], keys))

    (stem_w, _), (fc_w, fc_a) = fixed_bits
    for name, wb, ab in ((stem, stem_w, None), (classifier, fc_w, fc_a)):
        layer = modules[name]
        qw = weight_q(layer, [wb or 8])
        qw.init_weight_steps(layer.weight)
        qa = None if name == stem else LsqQuantizer([ab or 8], "act", signed=name in signed_inputs,
                                                     **common)
        wrapped = _wrap(layer, qw, qa)
        wrapped.set_bits(wb, ab)
        replace_module(model, name, wrapped)

    model.mpq_searchable = searchable
    model.mpq_fixed = (stem, classifier)
    model.mpq_bn_of = {c: b for c, b in bn_of.items() if c in searchable}
    model.mpq_bn_keyed_by = switchable_bn
    return model


def searchable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    names = getattr(model, "mpq_searchable", None)
    if names is None:
        raise InputError("model is not quantized: call convert_model first")
    modules = dict(model.named_modules())
    return [(n, modules[n]) for n in names]


def set_layer_bits(model: nn.Module, name: str, w_bits: int, a_bits: int) -> None:
    """Set one searchable layer's bits and switch its BN copy to match."""
    layer = model.get_submodule(name)
    layer.set_bits(w_bits, a_bits)
    bn_name = model.mpq_bn_of.get(name)
    if bn_name is not None:
        model.get_submodule(bn_name).set_key(bn_key(w_bits, a_bits, model.mpq_bn_keyed_by))


def set_policy_bits(model: nn.Module, w_bits: Sequence[int], a_bits: Sequence[int]) -> None:
    names = [n for n, _ in searchable_layers(model)]
    if len(w_bits) != len(names) or len(a_bits) != len(names):
        raise InputError(f"policy has {len(w_bits)}/{len(a_bits)} weight/act bits but the model has "
                         f"{len(names)} searchable layers")
    for name, w, a in zip(names, w_bits, a_bits):
        set_layer_bits(model, name, int(w), int(a))


def set_uniform_bits(model: nn.Module, bits: int, a_bits: int | None = None) -> None:
    n = len(searchable_layers(model))
    set_policy_bits(model, [bits] * n, [bits if a_bits is None else a_bits] * n)


def use_fc_scale_trick(model: nn.Module, enabled: bool = True) -> None:
    """Turn the SAT classifier scaling of the LIMPQ finetune on the fixed classifier (QuantLinear)."""
    classifier = model.get_submodule(getattr(model, "mpq_fixed", (None, None))[1] or "")
    if not isinstance(classifier, QuantLinear):
        raise InputError("fc_scale_trick needs a converted model whose classifier is a QuantLinear")
    classifier.fc_scale_trick = bool(enabled)
