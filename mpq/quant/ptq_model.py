"""PTQ checkpoints (kind 'ptq'): integer weights, scales, zero-points, activation steps, policy.

A PTQ model has folded BN and its own layers, so it cannot be rebuilt by the LSQ path; loading
re-creates that structure (layers and activation placement) from the arch, the policy and the
saved PTQ settings, then loads the saved state.
"""
from __future__ import annotations

from torch import nn

from .. import models
from ..checkpoint import load_checkpoint, load_state, register_loader, save_checkpoint
from ..policy import Policy
from .ptq import prepare_ptq_model, ptq_settings
from .ptq_layers import set_act_quant

KIND = "ptq"
# Checkpoints written before `act_placement` existed quantised every layer's input.
LEGACY_PLACEMENT = "input"


def save_ptq_model(path, model: nn.Module, policy: Policy, *, config: dict, metrics: dict | None = None,
                   recipe: dict | None = None, preprocessing: dict | None = None) -> None:
    save_checkpoint(path, state_dict=model.state_dict(), arch=policy.arch, num_classes=policy.num_classes,
                    kind=KIND, config=config, metrics=metrics, policy=policy.to_dict(),
                    ptq=ptq_settings(recipe), preprocessing=preprocessing)


@register_loader(KIND)
def ptq_model_from(ckpt: dict, source: str) -> nn.Module:
    """The PTQ model of a loaded 'ptq' checkpoint, ready for evaluation."""
    policy = Policy.from_dict(ckpt["policy"], source=source)
    model = models.create(ckpt["arch"], num_classes=ckpt["num_classes"])
    settings = ckpt.get("ptq", {})
    prepare_ptq_model(model, policy, settings.get("weight_grid", "affine"), init_ranges=False,
                      act_placement=settings.get("act_placement", LEGACY_PLACEMENT))
    load_state(model, ckpt["state_dict"], source)
    set_act_quant(model, True)
    return model


def load_ptq_model(path) -> tuple[nn.Module, Policy, dict]:
    """(model ready for evaluation, its policy, the checkpoint dict)."""
    ckpt = load_checkpoint(path, kind=KIND)
    return ptq_model_from(ckpt, str(path)), Policy.from_dict(ckpt["policy"], source=str(path)), ckpt
