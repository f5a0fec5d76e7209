"""N2UQ's RPReLU ResNet structure (ReActNet style), applied to a plain zoo ResNet in place.

The reference N2UQ ResNets put a per-channel shift -> PReLU -> shift in front of every quantized
conv of a residual block and after every residual add, where a plain ResNet has its ReLUs. This
module rewrites a plain ResNet into that structure, keeping every weight and every layer name
(`layerK.i.convJ`, `downsample.0`, `fc`), so policies, accounting and FP32 weights carry over.
Method notes and the initialisation: docs/methods/n2uq.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mpq.models import cifar_resnet
from mpq.models.torchvision_classes import loaded_classes
from ..errors import InputError

# PReLU slope at conversion. "relu": slope 0 and zero shifts, so every RPReLU computes a ReLU and
# the converted model equals the plain FP32 model it came from. "reference": the framework default
# 0.25 the reference starts from (its FP32 checkpoint already has this structure; ours does not).
SLOPE_INITS = {"relu": 0.0, "reference": 0.25}



class RPReLU(nn.Module):
    """x -> PReLU(x + shift_in) + shift_out, all per channel.

    The reference's LearnableBias -> PReLU -> LearnableBias as one module; its parameters are 1-D,
    so the optimizer groups treat them like BN parameters (base lr, no weight decay).
    """

    def __init__(self, channels: int, slope: float = 0.0, device=None):
        super().__init__()
        self.shift_in = nn.Parameter(torch.zeros(channels, device=device))
        self.slope = nn.Parameter(torch.full((channels,), float(slope), device=device))
        self.shift_out = nn.Parameter(torch.zeros(channels, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return F.prelu(x + self.shift_in.view(shape), self.slope) + self.shift_out.view(shape)

    def extra_repr(self) -> str:
        return f"channels={self.slope.numel()}"


class RPReLUBlock(nn.Module):
    """A residual block with an RPReLU before each conv and after the add, and no ReLU.

    `rpreluJ` feeds `convJ` (the reference's bias J1 -> prelu J -> bias J2 in front of quan J);
    `rprelu_out` follows the add. The downsample path takes the block input unchanged, as in the
    reference. Convs, BNs and the shortcut are the plain block's own modules.
    """

    def __init__(self, block: nn.Module, slope: float):
        super().__init__()
        self.depth = 3 if hasattr(block, "conv3") else 2
        device = block.conv1.weight.device
        for j in range(1, self.depth + 1):
            conv = getattr(block, f"conv{j}")
            setattr(self, f"rprelu{j}", RPReLU(conv.in_channels, slope, device))
            setattr(self, f"conv{j}", conv)
            setattr(self, f"bn{j}", getattr(block, f"bn{j}"))
        # After the convs because it runs after them: registration order == execution order.
        self.downsample = block.downsample
        self.rprelu_out = RPReLU(getattr(block, f"bn{self.depth}").num_features, slope, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for j in range(1, self.depth + 1):
            rprelu, conv, bn = (getattr(self, f"{n}{j}") for n in ("rprelu", "conv", "bn"))
            out = bn(conv(rprelu(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.rprelu_out(out + identity)


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _downsample_conv(block: RPReLUBlock, name: str) -> str | None:
    """Name of the shortcut's conv (option B / torchvision), None for identity or zero-pad."""
    if isinstance(block.downsample, nn.Sequential) and isinstance(block.downsample[0], nn.Conv2d):
        return f"{name}.downsample.0"
    return None


def add_rprelu(model: nn.Module, init: str = "relu") -> nn.Module:
    """Rewrite every residual block of a plain zoo ResNet into the RPReLU structure, in place.

    Must run on the float model, before quantizers are attached and before a state dict of the
    RPReLU structure is loaded. Updates `signed_inputs` (an RPReLU's output can be negative) and
    sets `rprelu_layers`: the convs the reference feeds to an LTQ although their input is signed
    (those behind an RPReLU and the downsample convs, which see a post-add RPReLU output).
    """
    if init not in SLOPE_INITS:
        raise InputError(f"rprelu_init {init!r} is unknown; use {', '.join(SLOPE_INITS)}")
    if getattr(model, "mpq_searchable", None) is not None:
        raise InputError("add the RPReLU structure before quantizing the model")
    plain = (cifar_resnet.BasicBlock, *loaded_classes("models.resnet.BasicBlock", "models.resnet.Bottleneck"))
    blocks = [(n, m) for n, m in model.named_modules() if isinstance(m, plain)]
    if not blocks or not isinstance(getattr(model, "fc", None), nn.Linear):
        raise InputError(f"the N2UQ RPReLU structure is defined for the zoo ResNets only, not "
                         f"{getattr(model, 'arch', type(model).__name__)!r}; set rprelu: false")
    signed, fed = set(model.signed_inputs), set()
    for index, (name, block) in enumerate(blocks):
        new = RPReLUBlock(block, SLOPE_INITS[init]).train(block.training)
        _swap(model, name, new)
        convs = {f"{name}.conv{j}" for j in range(1, new.depth + 1)}
        fed |= convs
        signed |= convs
        shortcut = _downsample_conv(new, name)
        if shortcut is not None:
            fed.add(shortcut)
            if index > 0:              # the first block's input is the stem's ReLU output
                signed.add(shortcut)
    signed.add("fc")                   # average of the last post-add RPReLU
    model.signed_inputs = frozenset(signed)
    model.rprelu_layers = frozenset(fed)
    return model
