"""Quantization-aware finetuning of a policy from the FP32 weights, driven by a recipe dict.

One loop serves every recipe (docs/methods/limpq.md, oscillations.md, n2uq.md): range init
(LSQ rule or MSE), epochs with optional dampening / freezing schedules, distillation and a
separate optimizer for quantizer parameters, then BN re-estimation so that the saved model is
evaluated with refreshed statistics.
"""
from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from ..config import section_defaults
from ..quant.base import Quantizer
from ..quant.oscillation import OscillationControl, OscillationOptions, oscillation_stats
from ..quant.range_init import init_act_steps, mse_range_init
from .kd import Distiller, KdOptions
from .loop import active_batchnorms, batches_for, evaluate, recalibrate_bn
from .fp32 import train_model
from .optim import WEIGHT_DECAY_SCOPES, build_optimizer
from ..config import section_defaults
from ..errors import InputError

log = logging.getLogger("mpq")


@torch.no_grad()
def reestimate_bn_batch_mean(model: nn.Module, loader, device, num_batches: int) -> int:
    """BN running stats = the average of per-batch statistics (docs/methods/oscillations.md).

    Everything but BN stays in eval mode, so quantizers and trackers do not change. Returns the
    number of images used.
    """
    bns = active_batchnorms(model)
    if not bns or num_batches <= 0:
        return 0
    model.eval()
    saved = [bn.momentum for bn in bns]
    sums = [(torch.zeros_like(bn.running_mean), torch.zeros_like(bn.running_var)) for bn in bns]
    batches = seen = 0
    try:
        for bn in bns:
            bn.momentum = 1.0
            bn.train()
        for x, _ in loader:
            model(x.to(device, non_blocking=True))
            for bn, (mean, var) in zip(bns, sums):
                mean += bn.running_mean
                var += bn.running_var
            batches, seen = batches + 1, seen + x.shape[0]
            if batches >= num_batches:
                break
        for bn, (mean, var) in zip(bns, sums):
            if batches:
                bn.running_mean.copy_(mean / batches)
                bn.running_var.copy_(var / batches)
    finally:
        for bn, momentum in zip(bns, saved):
            bn.momentum = momentum
        model.eval()
    return seen


def quantizer_parameters(model: nn.Module) -> set[int]:
    """ids of the parameters owned by quantizers (LSQ steps, LTQ thresholds and scales)."""
    return {id(p) for m in model.modules() if isinstance(m, Quantizer) for p in m.parameters()}


class _Params:
    """Just enough of a module for build_optimizer: named_parameters() over a chosen subset."""

    def __init__(self, named):
        self._named = list(named)

    def named_parameters(self):
        return iter(self._named)


class JointOptimizer:
    """Several optimizers stepped as one; param_groups lists all groups so one schedule drives them."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers
        self.param_groups = [g for o in optimizers for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for o, s in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(s)


def build_finetune_optimizer(model: nn.Module, recipe: dict):
    """The recipe's optimizer; with `quant_optimizer` the quantizer parameters get their own."""
    recipe = {**recipe, "weight_decay_scope": _weight_decay_scope(recipe)}
    qcfg = recipe.get("quant_optimizer")
    if not qcfg:
        return build_optimizer(model, recipe)
    owned = quantizer_parameters(model)
    named = list(model.named_parameters())
    weights = build_optimizer(_Params((n, p) for n, p in named if id(p) not in owned), recipe)
    quant_cfg = {"optimizer": qcfg["name"], "lr": qcfg["lr"], "weight_decay": qcfg["weight_decay"],
                 "momentum": qcfg["momentum"], "nesterov": qcfg["nesterov"]}
    quant = build_optimizer(_Params((n, p) for n, p in named if id(p) in owned), quant_cfg)
    return JointOptimizer(weights, quant)


def _recipe_choice(recipe: dict, key: str, auto: str, allowed: tuple[str, ...]) -> str:
    """recipe[key], with "auto" (the default) resolved to `auto`; anything else is refused."""
    choice = recipe.get(key, "auto")
    if choice == "auto":
        return auto
    if choice not in allowed:
        raise InputError(f"{key} {choice!r} is unknown; use auto, {', '.join(allowed)}")
    return choice


def _range_init(recipe: dict, oscillation: OscillationOptions) -> str:
    """The recipe's range init (schema default mse); `auto` keeps the old rule (MSE for the oscillation
    recipes, whose reference uses it; the LSQ rule otherwise)."""
    return _recipe_choice(section_defaults("finetune.*", recipe), "range_init",
                          "mse" if oscillation.mode != "none" else "lsq", ("mse", "lsq"))


def _bn_procedure(recipe: dict, oscillation: OscillationOptions) -> str:
    return _recipe_choice(recipe, "bn_recalibration",
                          "batch_mean" if oscillation.mode != "none" else "cumulative",
                          ("batch_mean", "cumulative"))


def _weight_decay_scope(recipe: dict) -> str:
    """auto: every weight parameter (BN and biases too) for the oscillation recipes, as the
    oscillations-qat reference's plain SGD does; >= 2-dim ones (timm's rule) otherwise."""
    oscillation = OscillationOptions.from_recipe(recipe)
    return _recipe_choice(recipe, "weight_decay_scope", "all" if oscillation.mode != "none" else "matrices",
                          WEIGHT_DECAY_SCOPES)


def reestimate_bn(model: nn.Module, recipe: dict, loader, device, batch_size: int) -> int:
    """BN re-estimation on `bn_recalibration_images` training images, by the recipe's procedure."""
    images = int(recipe["bn_recalibration_images"])
    if _bn_procedure(recipe, OscillationOptions.from_recipe(recipe)) == "batch_mean":
        return reestimate_bn_batch_mean(model, loader, device, batches_for(images, batch_size))
    return recalibrate_bn(model, loader, device, images)


def _rng_devices(device) -> list[int]:
    """The CUDA device whose generator fork_rng must save and restore (none off CUDA)."""
    device = torch.device(device)
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def measure_start(model: nn.Module, data, recipe: dict, device, bn_loader, *, batch_size: int,
                  workers: int) -> dict:
    """Test metrics of the model training starts from, BN re-estimated as at the end of finetune.

    Measured on a deep copy inside fork_rng (a file loader draws its base seed from the global
    generator), so training, its random stream and its result equal those of a run that does not
    measure (docs/methods/finetune_start.md).
    """
    from ..data import make_loader

    with torch.random.fork_rng(devices=_rng_devices(device)):
        probe = copy.deepcopy(model)
        reestimate_bn(probe, recipe, bn_loader, device, batch_size)
        test = evaluate(probe, make_loader(data.test, batch_size, train=False, workers=workers), device)
    del probe
    log.info("finetune start (after range init + BN re-estimation): top-1 %.2f", test["top1"])
    return {"start_top1": test["top1"], "start_top5": test["top5"], "start_loss": test["loss"]}


def _train(model, batches, recipe: dict, device, teacher, oscillation: OscillationOptions) -> dict:
    """The shared epoch loop (resumable, DDP-aware) with the recipe's loss terms in its step."""
    epochs = int(recipe["epochs"])
    distiller = Distiller(KdOptions.from_recipe(recipe), teacher.to(device) if teacher is not None else None,
                          recipe["label_smoothing"])
    control = None
    if oscillation.mode != "none":
        control = OscillationControl(model, oscillation, epochs * len(batches(0)))
    # The schedules' iteration counter must survive a resume like the weights do.
    progress_state = {"iteration": 0}

    def step(model, x, y):
        if control is not None:
            control.t = progress_state["iteration"]
            control.begin_iteration()
        progress_state["iteration"] += 1
        logits = model(x)
        loss = distiller.loss(logits, x, y)
        extra = control.regulariser() if control is not None else None
        if extra is not None:
            loss = loss + extra
        loss.backward()
        return loss, logits

    def report(epoch):
        stats = oscillation_stats(model)
        if stats:
            log.info("finetune epoch %d/%d oscillation: %s", epoch + 1, epochs,
                     " ".join(f"{k}={v}" for k, v in stats.items()))

    return train_model(model, batches, recipe, device, what="finetune", step=step, on_epoch_end=report,
                       extra_state=progress_state, optimizer=build_finetune_optimizer(model, recipe))


def finetune(model: nn.Module, data, recipe: dict, device, *, teacher: nn.Module | None = None,
             batch_size: int, seed: int, workers: int) -> dict:
    """QAT for `recipe['epochs']` epochs (0 = quantize and calibrate only), then BN re-estimation.

    `model` was built by mpq.build.quantize_for_policy with the same recipe (quantizer family and
    trackers); `teacher` is the FP32 model, needed when recipe kd.enabled.
    """
    from ..data import make_loader
    from ..data.splits import fraction_subset

    recipe = section_defaults("finetune.*", recipe)   # a caller's partial recipe: the schema's defaults
    # Drawn once (a new dataset object per epoch would be decoded again by the resident loader).
    train_share = fraction_subset(data.train, recipe["data_fraction"], batch_size, seed)

    def batches(epoch, shift=0):
        """Training batches (shift 0) come from the recipe's data_fraction share of the training
        split; the BN re-estimation stream (shift 1) reads all of it (docs/methods/data-fraction.md)."""
        source = data.train if shift else train_share
        return make_loader(source, batch_size, train=True, seed=seed + shift, epoch=epoch,
                           workers=workers)

    oscillation = OscillationOptions.from_recipe(recipe)
    model.to(device)
    first = next(iter(batches(0)))[0].to(device)
    if _range_init(recipe, oscillation) == "mse":
        mse_range_init(model, first)
    else:
        init_act_steps(model, first)
    fit, start = {"epochs": 0}, {}
    if int(recipe["epochs"]) > 0:   # with no training the start is the final model
        start = measure_start(model, data, recipe, device, batches(0, shift=1), batch_size=batch_size,
                              workers=workers)
        fit = _train(model, batches, recipe, device, teacher, oscillation)
    used = reestimate_bn(model, recipe, batches(0, shift=1), device, batch_size)
    log.info("BN re-estimated on %d training images", used)
    return {**fit, **start, **oscillation_stats(model), "bn_images": used}
