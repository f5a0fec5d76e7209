"""Rebuild models from checkpoints and policies (the glue every stage shares)."""
from __future__ import annotations

from torch import nn

from . import models
from .policy import Policy
from .quant import convert_model, set_policy_bits
from .train.checkpoint import CheckpointError, load_checkpoint


def load_state(model: nn.Module, state: dict, source: str) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{source}: weights do not fit the model (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}); it was written for another model or "
                              f"quantization setup, rerun the stage that writes it")


def fp32_model(path, arch: str, num_classes: int) -> tuple[nn.Module, dict]:
    """The pretrained float model, checked against the configured arch and class count."""
    ckpt = load_checkpoint(path, kind="fp32", arch=arch, num_classes=num_classes)
    model = models.create(arch, num_classes=num_classes)
    load_state(model, ckpt["state_dict"], str(path))
    return model, ckpt


def fixed_bits_of(quant_cfg: dict) -> tuple:
    fl = quant_cfg.get("fixed_layers", {})
    first, last = fl.get("first", [8, 8]), fl.get("last", [8, 8])
    return (tuple(first), tuple(last))


def quantize_for_policy(model: nn.Module, policy: Policy, quant_cfg: dict) -> nn.Module:
    """Single-bit LSQ per layer at the policy's bits (weights initialised at those bits)."""
    convert_model(model, image_size=policy.image_size,
                  weight_candidates=[[b] for b in policy.w_bits],
                  act_candidates=[[b] for b in policy.a_bits],
                  fixed_bits=policy.fixed_bits,
                  grad_scale=quant_cfg.get("grad_scale", True),
                  weight_per_channel=quant_cfg.get("weight_per_channel", False))
    set_policy_bits(model, policy.w_bits, policy.a_bits)
    return model


def quantized_model(path, quant_cfg: dict | None = None) -> tuple[nn.Module, Policy, dict]:
    """A finetuned quantized model with the policy it was trained for."""
    ckpt = load_checkpoint(path, kind="quantized")
    policy = Policy.from_dict(ckpt["policy"], source=str(path))
    model = models.create(ckpt["arch"], num_classes=ckpt["num_classes"])
    quantize_for_policy(model, policy, quant_cfg or ckpt.get("quant", {}))
    load_state(model, ckpt["state_dict"], str(path))
    return model, policy, ckpt
