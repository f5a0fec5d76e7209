"""Start from published FP32 weights instead of pretraining (config `pretrain.weights`).

`pretrain.weights` is either a torchvision weights name such as `ResNet18_Weights.IMAGENET1K_V1`
(downloaded once into torch's hub cache, `$TORCH_HOME`) or a path to a `.pth`/`.pt` file holding
a state dict (or a checkpoint dict with `state_dict` / `model` / `state_dict_ema` inside).

The zoo's ImageNet models are torchvision's own classes, so torchvision state dicts load without
renaming; timm's ResNets (e.g. `gluon_resnet50_v1b`, LIMPQ's and RFQuant's start points) use the
same names too. A leading DDP `module.` prefix is stripped. Every mismatch (missing, unexpected or
mis-shaped tensors) is an error in one line: a silently half-loaded model would only show up as
poor accuracy hours later.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger("mpq")

TORCHVISION_NAME = re.compile(r"^(\w+_Weights)\.(\w+)$")
CHECKPOINT_KEYS = ("state_dict", "model", "state_dict_ema", "model_state", "net")
HINT = ("set pretrain.weights to a torchvision weights name like ResNet18_Weights.IMAGENET1K_V1 "
        "or to the path of a .pth state dict")


class PretrainedError(ValueError):
    """Weights that cannot be found, fetched or loaded; the message is one line."""


def is_torchvision_name(weights: str) -> bool:
    return bool(TORCHVISION_NAME.match(weights.strip()))


def _torchvision_state_dict(name: str, arch: str | None) -> dict:
    import torchvision

    name = name.strip()
    try:
        weights = torchvision.models.get_weight(name)
    except Exception as e:  # noqa: BLE001 -- unknown enum or member: one line, with the known ones
        enum_name = TORCHVISION_NAME.match(name).group(1)
        known = ""
        if arch is not None:
            try:
                enum = torchvision.models.get_model_weights(arch)
                known = f"; {arch} has {', '.join(f'{enum.__name__}.{m.name}' for m in enum)}"
            except Exception:  # noqa: BLE001 -- arch without torchvision weights
                pass
        raise PretrainedError(f"unknown torchvision weights {name!r} ({enum_name}: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}){known}") from None
    if arch is not None:
        try:
            expected = torchvision.models.get_model_weights(arch)
        except Exception:  # noqa: BLE001 -- not a torchvision architecture (CIFAR ResNets)
            raise PretrainedError(f"torchvision weights {name} do not fit model {arch!r}, which is not a "
                                  f"torchvision architecture; {HINT}") from None
        if type(weights) is not expected:
            raise PretrainedError(f"torchvision weights {name} are for another architecture than {arch!r}; "
                                  f"use {expected.__name__}.<member>")
    try:
        return torch.hub.load_state_dict_from_url(weights.url, progress=False, check_hash=True)
    except Exception as e:  # noqa: BLE001 -- offline, proxy, disk full: all end the same way
        reason = " ".join(str(e).split()) or type(e).__name__
        raise PretrainedError(f"cannot fetch torchvision weights {name} from {weights.url} ({reason}); "
                              f"download the file where there is internet and set pretrain.weights "
                              f"to its path") from None


def _file_state_dict(path: str) -> dict:
    file = Path(path).expanduser()
    if not file.is_file():
        raise PretrainedError(f"pretrain.weights: no such file {str(file)!r}; {HINT}")
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- corrupt file, pickled code: one line
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        raise PretrainedError(f"cannot read state dict from {file}: {reason}") from None
    if isinstance(obj, dict):
        for key in CHECKPOINT_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PretrainedError(f"{file} does not hold a state dict (a dict of tensors, or a checkpoint with "
                              f"one of {', '.join(CHECKPOINT_KEYS)})")
    return obj


def read_state_dict(weights: str, arch: str | None = None) -> dict:
    """The state dict named by `pretrain.weights`, with a DDP `module.` prefix stripped."""
    if not isinstance(weights, str) or not weights.strip():
        raise PretrainedError(f"pretrain.weights must be a non-empty string, got {weights!r}; {HINT}")
    if is_torchvision_name(weights):
        state = _torchvision_state_dict(weights, arch)
    else:
        state = _file_state_dict(weights)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _few(names) -> str:
    names = sorted(names)
    return ", ".join(names[:4]) + (f" (+{len(names) - 4} more)" if len(names) > 4 else "")


def load_into(model: nn.Module, state: dict, source: str = "weights") -> None:
    """Copy `state` into `model`; any missing, unexpected or mis-shaped tensor is an error."""
    own = model.state_dict()
    # BN's num_batches_tracked is bookkeeping only; older checkpoints lack it.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    if shapes:
        problems.append(f"shape mismatch (file vs model): {_few(shapes)}")
    if missing:
        problems.append(f"missing: {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected: {_few(unexpected)}")
    if problems:
        arch = getattr(model, "arch", type(model).__name__)
        hint = ""
        if any(k.split(".")[0] in ("fc", "classifier") for k in (s.split(" ")[0] for s in shapes)):
            hint = "; the classifier differs: check model.num_classes against the weights' class count"
        raise PretrainedError(f"{source} do not fit {arch}: {'; '.join(problems)}{hint}")
    model.load_state_dict({k: v for k, v in state.items()}, strict=False)


def import_weights(model: nn.Module, weights: str) -> nn.Module:
    """Load `pretrain.weights` into a zoo model (in place) and return it."""
    state = read_state_dict(weights, getattr(model, "arch", None))
    load_into(model, state, source=f"weights {weights}")
    log.info("pretrain: imported FP32 weights from %s (%d tensors)", weights, len(state))
    return model


def import_and_evaluate(model: nn.Module, data, weights: str, device, *, batch_size: int, seed: int,
                        workers: int) -> dict:
    """The pretrain stage without training: import the weights, evaluate on the test split.

    Returns the same metric keys as `mpq.train.fp32.pretrain` (train_* are None, epochs 0).
    """
    from ..data import make_loader
    from .loop import evaluate

    del seed  # the test split is evaluated in a fixed order
    import_weights(model, weights)
    model.to(device)
    test = evaluate(model, make_loader(data.test, batch_size, train=False, workers=workers), device)
    log.info("pretrained %s: test top1=%.2f top5=%.2f loss=%.4f", weights, test["top1"], test["top5"], test["loss"])
    return {"train_loss": None, "train_acc": None, "epochs": 0, "weights": weights, **test}
