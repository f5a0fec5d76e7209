"""Cut one subnet out of the RFQuant supernet as an ordinary single-bit quantized model.

The exported model is exactly what `mpq.build.quantize_for_policy` builds, so the checkpoint it
goes into is a normal 'quantized' one and the evaluate stage needs nothing RFQuant-specific.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import models
from ..build import quantize_for_policy
from ..policy import Policy
from ..quant import LsqQuantizer, SwitchableBatchNorm2d, set_policy_bits
from ..errors import InputError


@torch.no_grad()
def _copy_module(dst: nn.Module, src: nn.Module) -> None:
    """Copy one module's own state: the chosen step, the active BN copy, or same-named tensors."""
    if isinstance(src, SwitchableBatchNorm2d):
        dst.load_state_dict(src.active_bn.state_dict())
    elif isinstance(src, LsqQuantizer):
        index = src.index_of(dst.candidate_list[0])
        dst.step[0].copy_(src.step[index].view_as(dst.step[0]))
        dst.init_state[0] = src.init_state[index]
    else:
        for name, tensor in [*dst.named_parameters(recurse=False), *dst.named_buffers(recurse=False)]:
            tensor.copy_(getattr(src, name))


def quant_config_for_export(quant_cfg: dict) -> dict:
    """The quant section stored with an exported subnet: the supernet trains without grad scaling."""
    return {**quant_cfg, "grad_scale": False}


def export_subnet(supernet: nn.Module, policy: Policy, quant_cfg: dict) -> nn.Module:
    """The single-bit model of `policy` holding the supernet's weights, steps and BN copies.

    The supernet is left set to the policy's bits.
    """
    if policy.arch != getattr(supernet, "arch", policy.arch):
        raise InputError(f"policy is for {policy.arch} but the supernet is a {supernet.arch}")
    policy.check_model(supernet.mpq_searchable)
    set_policy_bits(supernet, policy.w_bits, policy.a_bits)
    target = models.create(policy.arch, num_classes=policy.num_classes)
    quantize_for_policy(target, policy, quant_config_for_export(quant_cfg))
    param = next(supernet.parameters())
    target.to(device=param.device, dtype=param.dtype)
    sources = dict(supernet.named_modules())
    for name, module in target.named_modules():
        _copy_module(module, sources[name])
    return target


def save_recalibrated_subnet(out, supernet: nn.Module, policy: Policy, spec: dict, data, device,
                             supernet_path) -> nn.Module:
    """Finetune recipe 'none' for RFQuant: the policy's subnet with its BN re-estimated on
    `recipe.bn_recalibration_images` training images, saved at `out` as an ordinary quantized
    checkpoint; returns the model (in eval use it equals the checkpoint loaded back)."""
    from ..checkpoint import save_checkpoint
    from ..stage_common import loader_args, preprocessing_of
    from .supernet import calibrate_bn

    arch, num_classes = spec["model"]["arch"], spec["model"]["num_classes"]
    model = export_subnet(supernet, policy, spec["quant"]).to(device)
    loading = loader_args(spec)
    used = calibrate_bn(model, data.train, device, images=int(spec["recipe"]["bn_recalibration_images"]),
                        batch_size=loading["batch_size"], seed=loading["seed"] + 1, workers=loading["workers"])
    save_checkpoint(out, state_dict=model.state_dict(), arch=arch, num_classes=num_classes,
                    kind="quantized", config=spec, metrics={"epochs": 0, "bn_images": used},
                    policy=policy.to_dict(), quant=quant_config_for_export(spec["quant"]),
                    supernet=str(supernet_path), preprocessing=preprocessing_of(data))
    return model
