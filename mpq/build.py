"""Rebuild models from checkpoints and policies (the glue every stage shares)."""
from __future__ import annotations

from torch import nn

from . import models
from .config import section_defaults
from .checkpoint import load_checkpoint, load_state, model_from_checkpoint, register_loader
from .policy import Policy
from .quant import convert_model, set_policy_bits
from .models.rprelu import add_rprelu
from .quant.convert import lsq_options, use_fc_scale_trick
from .quant.n2uq import use_n2uq_quantizers
from .quant.oscillation import OscillationOptions, track_oscillations
from .quant.ptq_model import KIND as PTQ_KIND   # importing it registers the 'ptq' loader
from .errors import InputError

FINETUNED_KINDS = ("quantized", PTQ_KIND)   # what a finetune rule writes: QAT/subnet, calibration-only


@register_loader("fp32")
def fp32_model_from(ckpt: dict, source: str) -> nn.Module:
    """The float model of a loaded 'fp32' checkpoint."""
    model = models.create(ckpt["arch"], num_classes=ckpt["num_classes"])
    load_state(model, ckpt["state_dict"], source)
    return model


def fp32_model(path, arch: str, num_classes: int) -> tuple[nn.Module, dict]:
    """The pretrained float model, checked against the configured arch and class count."""
    ckpt = load_checkpoint(path, kind="fp32", arch=arch, num_classes=num_classes)
    return fp32_model_from(ckpt, str(path)), ckpt


def fixed_bits_of(quant_cfg: dict) -> tuple:
    fixed = quant_cfg["fixed_layers"]
    return (tuple(fixed["first"]), tuple(fixed["last"]))


METHODS = ("lsq", "n2uq")


def rprelu_init_of(recipe: dict, method: str) -> str | None:
    """The RPReLU initialisation a recipe asks for, None for the plain ReLU structure.

    `rprelu` defaults to on for method n2uq (the reference's architecture) and off otherwise;
    `rprelu_init` relu (default: equals the plain FP32 model) or reference (PReLU slopes 0.25).
    """
    if not recipe["rprelu"]:
        return None
    return recipe["rprelu_init"]


def quantize_for_policy(model: nn.Module, policy: Policy, quant_cfg: dict, recipe: dict | None = None) -> nn.Module:
    """Single-bit quantizers per layer at the policy's bits, as the finetune recipe asks.

    method lsq (default): LSQ everywhere (weights initialised at their bits); n2uq: N2UQ weight
    and activation quantizers on the searchable layers, on the RPReLU ResNet structure unless the
    recipe says rprelu: false (mpq.models.rprelu). oscillation dampen/freeze: trackers on
    the low-bit LSQ weights. fc_scale_trick: the SAT classifier scaling (docs/methods/lsq.md).
    The same call rebuilds a finetuned checkpoint, so it must depend on
    nothing but its arguments.
    """
    # A caller's partial sections (or no recipe: LSQ) get the schema's defaults.
    recipe, quant_cfg = section_defaults("finetune.*", recipe), section_defaults("quant", quant_cfg)
    method = recipe["method"]
    if method == "none":   # no training: LSQ quantizers at their initial steps, BN re-estimated
        method = "lsq"
    if method not in METHODS:
        raise InputError(f"finetune method {method!r} is unknown; use one of {', '.join(METHODS)}")
    oscillation = OscillationOptions.from_recipe(recipe)
    if method == "n2uq" and oscillation.mode != "none":
        raise InputError("oscillation dampening/freezing acts on LSQ weights; it does not apply to "
                         "method n2uq (set oscillation: none)")
    rprelu_init = rprelu_init_of(recipe, method)
    if rprelu_init is not None:     # structure first: a finetuned state dict has the RPReLU keys
        add_rprelu(model, rprelu_init)
    convert_model(model, image_size=policy.image_size,
                  weight_candidates=[[b] for b in policy.w_bits],
                  act_candidates=[[b] for b in policy.a_bits],
                  fixed_bits=policy.fixed_bits,
                  **lsq_options(quant_cfg),
                  weight_per_channel=quant_cfg["weight_per_channel"])
    set_policy_bits(model, policy.w_bits, policy.a_bits)
    if method == "n2uq":
        use_n2uq_quantizers(model)
    if oscillation.mode != "none":
        track_oscillations(model, oscillation)
    if recipe["fc_scale_trick"]:
        use_fc_scale_trick(model)
    return model


@register_loader("quantized")
def quantized_model_from(ckpt: dict, source: str, quant_cfg: dict | None = None) -> nn.Module:
    """The model of a loaded 'quantized' checkpoint, rebuilt as its recipe built it."""
    policy = Policy.from_dict(ckpt["policy"], source=source)
    model = models.create(ckpt["arch"], num_classes=ckpt["num_classes"])
    quantize_for_policy(model, policy, quant_cfg or ckpt.get("quant", {}), ckpt.get("recipe"))
    load_state(model, ckpt["state_dict"], source)
    return model


def quantized_model(path, quant_cfg: dict | None = None) -> tuple[nn.Module, Policy, dict]:
    """A finetuned quantized model with the policy it was trained for, rebuilt as its recipe built it."""
    ckpt = load_checkpoint(path, kind="quantized")
    model = quantized_model_from(ckpt, str(path), quant_cfg)
    return model, Policy.from_dict(ckpt["policy"], source=str(path)), ckpt


def finetuned_model(path) -> tuple[nn.Module, Policy, dict]:
    """Any model a finetune rule writes (FINETUNED_KINDS), rebuilt by the loader of its kind."""
    ckpt = load_checkpoint(path, kind=FINETUNED_KINDS)
    model = model_from_checkpoint(ckpt, path)
    return model, Policy.from_dict(ckpt["policy"], source=str(path)), ckpt
