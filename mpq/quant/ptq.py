"""Post-training quantisation of an FP32 model to any policy (docs/methods/ptq.md).

Fold BN; MSE-initialise per-channel weight grids; AdaRound block by block against the FP outputs
(inputs from the already-quantised network, activations unquantised); MSE-initialise the
activation steps on the first images, then learn them block by block from FP inputs. No weight
is trained and no label is used. Activation quantisers sit where BRECQ puts them (block outputs)
unless `act_placement: input`; calibration images are training crops with the training
augmentation unless `calib_transform: eval`.
"""
from __future__ import annotations

import copy
import logging
import time

import torch
from torch import nn

from ..data.calibration import calibration_images
from .bn_fold import fold_batchnorm
from .ptq_layers import ACT_PLACEMENTS, convert_to_ptq, set_act_quant
from .reconstruction import capture, reconstruct_acts, reconstruct_weights, reconstruction_units
from ..config import section_defaults, section_keys
from ..errors import InputError

log = logging.getLogger("mpq")

CALIB_TRANSFORMS = ("train", "eval")


def ptq_settings(recipe: dict | None) -> dict:
    """The PTQ keys of a finetune recipe, the schema's defaults (method ptq) filled in for any not
    given; the QAT keys every recipe carries are left out, unknown keys are errors (typos)."""
    recipe = dict(recipe or {})
    unknown = sorted(set(recipe) - section_keys("finetune.*"))
    if unknown:
        raise InputError(f"unknown ptq setting(s) {unknown}: not a finetune recipe key (config/README.md)")
    filled = section_defaults("finetune.*", {**recipe, "method": "ptq"})
    qat_only = section_defaults("finetune.*", {"method": "lsq"})
    cfg = {k: v for k, v in filled.items() if k not in qat_only}
    for key, choices in (("act_placement", ACT_PLACEMENTS), ("calib_transform", CALIB_TRANSFORMS)):
        if cfg[key] not in choices:
            raise InputError(f"ptq {key} {cfg[key]!r} is unknown; use one of {', '.join(choices)}")
    if cfg["loss"] != "mse":
        raise InputError(f"ptq loss {cfg['loss']!r} is not supported; use 'mse' (Fisher weighting is not implemented)")
    if int(cfg["calib_images"]) < 1 or int(cfg["batch_size"]) < 1 or int(cfg["iters_w"]) < 0 \
            or int(cfg["iters_a"]) < 0:
        raise InputError("ptq calib_images and batch_size must be >= 1, iters_w and iters_a >= 0")
    return cfg


def calibration_set(train_dataset, cfg: dict, seed: int) -> torch.Tensor:
    """The calibration images of a PTQ run: `calib_images` training images, fixed by the seed,
    through the training augmentation (BRECQ draws them from its training loader) or the
    evaluation transform."""
    return calibration_images(train_dataset, int(cfg["calib_images"]), seed,
                              augment=cfg["calib_transform"] == "train")


def prepare_ptq_model(model: nn.Module, policy, grid: str = "affine", init_ranges: bool = True,
                      act_placement: str = "output") -> nn.Module:
    """Fold BN and swap in PTQ layers at the policy's bits (in place)."""
    fold_batchnorm(model, policy.image_size)
    convert_to_ptq(model, policy, grid=grid, init_ranges=init_ranges, act_placement=act_placement)
    model.requires_grad_(False)
    return model.eval()


def ptq_quantize(fp32: nn.Module, policy, images: torch.Tensor, recipe: dict | None = None, *,
                 seed: int = 0) -> tuple[nn.Module, dict]:
    """A quantised copy of `fp32` (left unchanged) calibrated on `images`; returns (model, metrics)."""
    cfg = ptq_settings(recipe)
    started = time.perf_counter()
    device = next(fp32.parameters()).device
    images = images.to(device)
    reference = fold_batchnorm(copy.deepcopy(fp32).eval(), policy.image_size).requires_grad_(False)
    model = prepare_ptq_model(copy.deepcopy(fp32), policy, cfg["weight_grid"], act_placement=cfg["act_placement"])
    generator = torch.Generator().manual_seed(int(seed))
    batch, units = int(cfg["batch_size"]), reconstruction_units(model)
    stats = {name: {} for name in units}

    set_act_quant(model, False)
    for name in units:
        inputs, _ = capture(model, name, images, 256)
        _, targets = capture(reference, name, images, 256)
        stats[name].update(reconstruct_weights(
            model.get_submodule(name), inputs, targets, iters=int(cfg["iters_w"]), batch_size=batch,
            lr=float(cfg["lr_w"]), round_lambda=float(cfg["round_lambda"]), warmup=float(cfg["warmup"]),
            beta_range=tuple(cfg["beta_range"]), generator=generator))
    log.info("ptq: weights reconstructed in %.1fs", time.perf_counter() - started)

    set_act_quant(model, True)
    with torch.no_grad():
        model(images[:int(cfg["act_init_images"])])
    for name in units:
        inputs, targets = capture(reference, name, images, 256)
        stats[name].update(reconstruct_acts(
            model.get_submodule(name), inputs, targets, iters=int(cfg["iters_a"]), batch_size=batch,
            lr=float(cfg["lr_a"]), p=float(cfg["p_a"]), generator=generator))
    seconds = time.perf_counter() - started
    log.info("ptq: done in %.1fs on %d calibration images", seconds, len(images))
    return model, {"calib_images": len(images), "units": stats, "seconds": round(seconds, 3),
                   "settings": cfg}
