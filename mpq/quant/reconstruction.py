"""BRECQ-style reconstruction (docs/methods/ptq.md): fit one block at a time to the FP
model's output of that block, from cached inputs.

Units are the blocks (ResNet basic/bottleneck, MobileNetV2 inverted residual, conv-norm-act) and
every layer outside them except the stem, which stays round-to-nearest.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .adaround import annealed_beta, rectified_sigmoid, rounding_regularizer
from .blocks import find_blocks
from .convert import split_layers
from .ptq_layers import act_quantizers, ptq_layers


UNDECIDED = (0.01, 0.99)   # h(V) strictly inside: the soft rounding has not chosen up or down


class _Stop(Exception):
    """Ends a forward pass once the wanted tensors are captured."""


def reconstruction_units(model: nn.Module) -> list[str]:
    """Module names in network order: blocks, then loose layers, never the stem's."""
    stem, searchable, classifier = split_layers(model)
    blocks = [b for b in find_blocks(model) if stem not in b.layers]
    in_blocks = {n for b in find_blocks(model) for n in b.layers}
    loose = [n for n in (*searchable, classifier) if n not in in_blocks]
    order = [n for n, _ in model.named_modules()]
    return sorted([b.name for b in blocks] + loose, key=order.index)


@torch.no_grad()
def capture(model: nn.Module, name: str, images: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, outputs) of module `name` over all images; the pass stops right after it."""
    module = model.get_submodule(name)
    seen: dict[str, torch.Tensor] = {}

    def grab_input(m, inp):
        seen["input"] = inp[0].detach().clone()

    def grab_output(m, inp, out):
        seen["output"] = out.detach().clone()
        raise _Stop

    hooks = [module.register_forward_pre_hook(grab_input), module.register_forward_hook(grab_output)]
    inputs, outputs = [], []
    try:
        for start in range(0, len(images), batch_size):
            try:
                model(images[start:start + batch_size])
            except _Stop:
                pass
            inputs.append(seen.pop("input"))
            outputs.append(seen.pop("output"))
    finally:
        for h in hooks:
            h.remove()
    return torch.cat(inputs), torch.cat(outputs)


def lp_loss(pred: torch.Tensor, target: torch.Tensor, p: float) -> torch.Tensor:
    """Sum over channels (dim 1) of |error|^p, mean over batch and positions."""
    return (pred - target).abs().pow(p).sum(1).mean()


def _batches(n: int, batch_size: int, steps: int, generator: torch.Generator):
    for _ in range(steps):
        yield torch.randint(n, (min(batch_size, n),), generator=generator)


def reconstruct_weights(unit: nn.Module, inputs, targets, *, iters: int, batch_size: int, lr: float,
                        round_lambda: float, warmup: float, beta_range, generator) -> dict:
    """AdaRound the unit's weights against its FP outputs, then commit the hard rounding."""
    layers = [m for _, m in ptq_layers(unit) if m.w_bits is not None]
    if not layers:
        return {}
    rounding = [layer.start_rounding() for layer in layers]
    optimizer = torch.optim.Adam(rounding, lr=lr)
    rec = torch.zeros(())
    for step, idx in enumerate(_batches(len(inputs), batch_size, iters, generator)):
        idx = idx.to(inputs.device)
        rec = lp_loss(unit(inputs[idx]), targets[idx], 2.0)
        beta = annealed_beta(step, iters, warmup, beta_range)
        loss = rec if beta is None else rec + round_lambda * sum(rounding_regularizer(v, beta) for v in rounding)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        h = torch.cat([rectified_sigmoid(v).flatten() for v in rounding])
        undecided = float(((h > UNDECIDED[0]) & (h < UNDECIDED[1])).float().mean())
    for layer in layers:
        layer.finish_rounding()
    return {"weight_rec_loss": float(rec.detach()), "undecided_rounding": undecided}


def reconstruct_acts(unit: nn.Module, inputs, targets, *, iters: int, batch_size: int, lr: float, p: float,
                     generator) -> dict:
    """Learn the steps of the unit's activation quantisers (its layers' inputs and, in BRECQ's
    placement, its output; zero-points fixed), Adam with cosine decay to 0."""
    steps = [q.delta for _, q in act_quantizers(unit) if q.bits is not None]
    if not steps or iters <= 0:
        return {}
    for s in steps:
        s.requires_grad_(True)
    optimizer = torch.optim.Adam(steps, lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 0.5 * (1 + math.cos(math.pi * t / iters)))
    loss = torch.zeros(())
    for idx in _batches(len(inputs), batch_size, iters, generator):
        idx = idx.to(inputs.device)
        loss = lp_loss(unit(inputs[idx]), targets[idx], p)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            for s in steps:
                s.clamp_(min=1e-8)   # a step must stay positive
    for s in steps:
        s.requires_grad_(False)
    return {"act_rec_loss": float(loss.detach())}
