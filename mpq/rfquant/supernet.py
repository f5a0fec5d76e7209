"""The RFQuant bit supernet: one weight-shared network that runs at any per-layer (w, a) pair.

Each searchable layer keeps a multi-bit LSQ quantizer for weights and one for activations (one
step per candidate) and, after it, a BN copy per (w, a) pair (docs/methods/rfquant.md).
The candidate lists the supernet may currently use change during training (bit-width scheduler),
so they live in a `CandidateState` that is saved next to the weights and honoured by the search.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import models
from ..checkpoint import load_checkpoint, load_state, register_loader, save_checkpoint
from ..quant import conv_bn_pairs, convert_model, searchable_layers, set_policy_bits, split_layers
from ..quant.range_init import init_act_steps
from ..train.loop import recalibrate_bn
from ..errors import InputError


@dataclass
class CandidateState:
    """Per searchable layer: its full weight/act candidate lists and the lists in use now.

    Lists are descending. Weight and activation lists are always separate (spec section 10 #2).
    """

    names: list[str]
    full_w: list[list[int]]
    full_a: list[list[int]]
    w: list[list[int]] = field(default=None)
    a: list[list[int]] = field(default=None)

    def __post_init__(self):
        self.full_w = [sorted(c, reverse=True) for c in self.full_w]
        self.full_a = [sorted(c, reverse=True) for c in self.full_a]
        self.w = [list(c) for c in self.full_w] if self.w is None else [sorted(c, reverse=True) for c in self.w]
        self.a = [list(c) for c in self.full_a] if self.a is None else [sorted(c, reverse=True) for c in self.a]

    def max_subnet(self) -> tuple[list[int], list[int]]:
        return [c[0] for c in self.w], [c[0] for c in self.a]

    def to_dict(self) -> dict:
        return {"names": list(self.names), "full_w": self.full_w, "full_a": self.full_a,
                "w": self.w, "a": self.a}

    @classmethod
    def from_dict(cls, doc: dict) -> "CandidateState":
        return cls(list(doc["names"]), doc["full_w"], doc["full_a"], doc["w"], doc["a"])


def layer_candidates(layer: nn.Module, candidates, depthwise_min_bits: int = 3) -> list[int]:
    """The candidates of one layer; depthwise convs (weight shape[1] == 1) skip the lowest bits."""
    cands = sorted({int(b) for b in candidates}, reverse=True)
    depthwise = isinstance(layer, nn.Conv2d) and layer.groups > 1 and layer.weight.shape[1] == 1
    return [b for b in cands if b >= depthwise_min_bits] if depthwise else cands


def build_supernet(model: nn.Module, *, image_size: int, candidates, fixed_bits=((8, 8), (8, 8)),
                   switchable_bn: str = "pair", grad_scale: bool = False,
                   depthwise_min_bits: int = 3) -> CandidateState:
    """Wrap a float model as a supernet, in place; returns its (full) candidate state.

    switchable_bn 'pair' gives one BN copy per (w, a) pair; 'recalibrate' keeps one shared BN, which then
    relies on BN calibration before every evaluation.
    """
    if switchable_bn == "none":   # the earlier name of 'recalibrate' (supernets saved with it)
        switchable_bn = "recalibrate"
    if switchable_bn not in ("pair", "recalibrate"):
        raise InputError(f"rfquant switchable_bn must be 'pair' or 'recalibrate', not {switchable_bn!r}")
    _, names, _ = split_layers(model)
    modules = dict(model.named_modules())
    per_layer = [layer_candidates(modules[n], candidates, depthwise_min_bits) for n in names]
    shared_bn = conv_bn_pairs(model, image_size) if switchable_bn == "recalibrate" else None
    convert_model(model, image_size=image_size, weight_candidates=per_layer, act_candidates=per_layer,
                  fixed_bits=fixed_bits, switchable_bn="pair" if switchable_bn == "pair" else None,
                  grad_scale=grad_scale)
    bn_of = model.mpq_bn_of if shared_bn is None else {c: b for c, b in shared_bn.items() if c in names}
    model.rfquant_bn_of = dict(bn_of)   # the BN after each searchable layer (IDM taps its output)
    model.rfquant_build = {"image_size": int(image_size), "candidates": [int(b) for b in candidates],
                           "fixed_bits": [list(p) for p in fixed_bits], "switchable_bn": switchable_bn,
                           "grad_scale": bool(grad_scale), "depthwise_min_bits": int(depthwise_min_bits)}
    return CandidateState(names, per_layer, [list(c) for c in per_layer])


def sample_subnet(state: CandidateState, generator: torch.Generator) -> tuple[list[int], list[int]]:
    """Every layer independently draws bw ~ U(current w list) and ba ~ U(current a list)."""
    def draw(cands):
        return cands[int(torch.randint(len(cands), (1,), generator=generator))]

    w_bits, a_bits = [], []
    for wc, ac in zip(state.w, state.a):
        w_bits.append(draw(wc))
        a_bits.append(draw(ac))
    return w_bits, a_bits


@torch.no_grad()
def init_supernet_act_steps(model: nn.Module, state: CandidateState, x: torch.Tensor) -> None:
    """Initialise every activation step up front (one forward per candidate rank, BN untouched).

    Lazy initialisation inside training would leave the EMA copy averaging towards a step that
    was still at its placeholder value when the copy was made.
    """
    for i in range(max(len(c) for c in state.full_a + state.full_w)):
        w = [c[min(i, len(c) - 1)] for c in state.full_w]
        a = [c[min(i, len(c) - 1)] for c in state.full_a]
        set_policy_bits(model, w, a)
        init_act_steps(model, x)


def calibration_batches(dataset, batch_size: int, seed: int, workers: int = 0, device="cpu"):
    """Endless augmented training batches, epoch after epoch, for BN calibration of any length."""
    from ..data import make_loader

    for epoch in itertools.count():
        yield from make_loader(dataset, batch_size, train=True, seed=seed, epoch=epoch, workers=workers,
                               device=device)


def calibrate_bn(model: nn.Module, dataset, device, *, images: int, batch_size: int, seed: int,
                 workers: int = 0) -> int:
    """Spec section 2: reset the active BN copies and re-estimate them on about `images` images."""
    return recalibrate_bn(model, calibration_batches(dataset, batch_size, seed, workers), device, images)


def subnet_accuracy(model: nn.Module, w_bits, a_bits, calib_set, eval_set, device, *, images: int,
                    batch_size: int, seed: int, workers: int = 0) -> dict:
    """Top-1/top-5 of one configuration after BN calibration on `calib_set` (never the test set
    unless the caller says so)."""
    from ..data import make_loader
    from ..train.loop import evaluate

    set_policy_bits(model, w_bits, a_bits)
    used = calibrate_bn(model, calib_set, device, images=images, batch_size=batch_size, seed=seed, workers=workers)
    return {**evaluate(model, make_loader(eval_set, batch_size, train=False, workers=workers), device),
            "bn_images": used}


def save_supernet(path, model: nn.Module, state: CandidateState, *, num_classes: int, holdout: dict,
                  config: dict, metrics: dict | None = None) -> None:
    """Write the supernet (normally the EMA copy) with what rebuilding and searching it needs.

    holdout: {"fraction", "seed"} of the training images kept out of training for the search.
    """
    save_checkpoint(path, state_dict=model.state_dict(), arch=model.arch, num_classes=num_classes,
                    kind="supernet", config=config, metrics=metrics, supernet=model.rfquant_build,
                    candidates=state.to_dict(), holdout=dict(holdout))


@register_loader("supernet")
def supernet_from(ckpt: dict, source: str) -> nn.Module:
    """The supernet of a loaded 'supernet' checkpoint."""
    model = models.create(ckpt["arch"], num_classes=ckpt["num_classes"])
    build = dict(ckpt["supernet"])
    build_supernet(model, image_size=build.pop("image_size"), **build)
    load_state(model, ckpt["state_dict"], source)
    return model


def load_supernet(path) -> tuple[nn.Module, CandidateState, dict]:
    """The supernet written by save_supernet, with its final candidate lists."""
    ckpt = load_checkpoint(path, kind="supernet")
    model = supernet_from(ckpt, str(path))
    state = CandidateState.from_dict(ckpt["candidates"])
    names = [n for n, _ in searchable_layers(model)]
    if names != state.names:
        raise InputError(f"{path}: candidate lists name other layers than the model's; rerun train_supernet")
    return model, state, ckpt
