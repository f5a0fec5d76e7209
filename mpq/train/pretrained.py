"""Start from published FP32 weights instead of pretraining (config `pretrain.weights`).

`pretrain.weights` is either a torchvision weights name such as `ResNet18_Weights.IMAGENET1K_V1`
(downloaded once into torch's hub cache, `$TORCH_HOME`) or a path to a `.pth`/`.pt`/`.th` file
holding a state dict (or a checkpoint dict with `state_dict` / `model` / `state_dict_ema` inside).
Files are read with `torch.load(weights_only=True)`: tensors and plain containers only, no code.

Published checkpoints name their tensors in a few known ways (LAYOUTS): wrapper prefixes
(`module.` of DDP/DataParallel, `_orig_mod.` of torch.compile) are stripped, then the first layout
whose key pattern matches renames the names onto the zoo and the choice is logged. Every remaining
mismatch (missing, unexpected or mis-shaped tensors) is an error in one line that says how to rename:
a silently half-loaded model would only show up as poor accuracy hours later. See docs/pretrained.md.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import load_failure
from ..errors import InputError

log = logging.getLogger("mpq")

TORCHVISION_NAME = re.compile(r"^(\w+_Weights)\.(\w+)$")
CHECKPOINT_KEYS = ("state_dict", "model", "state_dict_ema", "model_state", "net")
HINT = ("set pretrain.weights to a torchvision weights name like ResNet18_Weights.IMAGENET1K_V1 "
        "or to the path of a .pth state dict")


class PretrainedError(InputError):
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
        raise PretrainedError(f"cannot read state dict from {file}: {load_failure(e, width=300)}") from None
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
    """The state dict named by `pretrain.weights`, with its names as stored."""
    if not isinstance(weights, str) or not weights.strip():
        raise PretrainedError(f"pretrain.weights must be a non-empty string, got {weights!r}; {HINT}")
    if is_torchvision_name(weights):
        return _torchvision_state_dict(weights, arch)
    return _file_state_dict(weights)


# --- known layouts of published checkpoints ------------------------------------------------------
WRAPPER_PREFIXES = ("module.", "_orig_mod.")   # DDP / DataParallel, torch.compile


@dataclass(frozen=True)
class Rename:
    """One regex substitution on tensor names, with the few words that describe it in the log."""
    pattern: str
    replacement: str
    note: str

    def apply(self, name: str) -> str:
        return re.sub(self.pattern, self.replacement, name)


@dataclass(frozen=True)
class Layout:
    """A published checkpoint layout: the names that identify it and the renames onto the zoo."""
    name: str
    marks: tuple[str, ...] = ()     # names that must all be present
    any_of: tuple[str, ...] = ()    # at least one of these must be present (when given)
    absent: tuple[str, ...] = ()    # names that must not be present
    renames: tuple[Rename, ...] = ()

    def matches(self, names) -> bool:
        names = set(names)
        return (all(m in names for m in self.marks) and not any(a in names for a in self.absent)
                and (not self.any_of or any(m in names for m in self.any_of)))


LAYOUTS = (
    # akamaster/pytorch_resnet_cifar10 (ResNet-20/32/44/56/110/1202): the classifier is `linear`, an
    # option-B shortcut is `shortcut.0/.1`; option A is a parameter-free pad in both, like the zoo's.
    Layout("cifar10-resnet-release", marks=("linear.weight", "layer1.0.conv1.weight"), absent=("fc.weight",),
           renames=(Rename(r"^linear\.", "fc.", "linear -> fc"),
                    Rename(r"\.shortcut\.", ".downsample.", "shortcut -> downsample"))),
    # torchvision's own files, timm's ResNets (gluon_resnet50_v1b, ...) and mpq checkpoints: the zoo's
    # ImageNet models are torchvision's classes and timm's ResNets use the same names.
    Layout("torchvision/timm", any_of=("fc.weight", "classifier.1.weight")),
)
UNKNOWN = Layout("unknown")   # names kept as stored; a mismatch then says how to rename them


def _strip_wrappers(state: dict) -> tuple[dict, list[str]]:
    stripped = []
    for prefix in WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
            stripped.append(prefix)
    return state, stripped


def map_onto_zoo(state: dict) -> tuple[dict, Layout, str]:
    """(renamed state, the layout recognised, what was done in words) for a published state dict."""
    state, stripped = _strip_wrappers(state)
    layout = next((candidate for candidate in LAYOUTS if candidate.matches(state)), UNKNOWN)
    notes = [f"{prefix} stripped" for prefix in stripped]
    for rename in layout.renames:
        renamed = {rename.apply(k): v for k, v in state.items()}
        if renamed.keys() != state.keys():
            notes.append(rename.note)
        state = renamed
    return state, layout, ", ".join(notes) or "names kept"


# --- loading with one-line errors -----------------------------------------------------------------
def _few(names) -> str:
    names = sorted(names)
    return ", ".join(names[:4]) + (f" (+{len(names) - 4} more)" if len(names) > 4 else "")


def _split_common(a: list[str], b: list[str]) -> tuple[int, int]:
    """Lengths of the common leading and trailing dotted parts of two names (not overlapping)."""
    lead = 0
    while lead < min(len(a), len(b)) and a[lead] == b[lead]:
        lead += 1
    trail = 0
    while trail < min(len(a), len(b)) - lead and a[-1 - trail] == b[-1 - trail]:
        trail += 1
    return lead, trail


def rename_hints(missing, unexpected, own: dict, state: dict, limit: int = 2) -> list[str]:
    """'rename keys so that X becomes Y' for unexpected names that pair with a missing one.

    A pair shares the last dotted part (weight, bias, running_mean, ...) and the tensor shape; the
    parts that differ form a rule, and the rules that cover the most names are reported first.
    """
    free = set(missing)
    rules, examples = Counter(), {}
    for name in sorted(unexpected):
        parts = name.split(".")
        best, best_score = None, 0
        for target in sorted(free):
            target_parts = target.split(".")
            if target_parts[-1] != parts[-1] or tuple(own[target].shape) != tuple(state[name].shape):
                continue
            score = sum(_split_common(parts, target_parts))
            if score > best_score:
                best, best_score = target, score
        if best is None:
            continue
        free.discard(best)
        target_parts = best.split(".")
        lead, trail = _split_common(parts, target_parts)
        rule = (".".join(parts[lead:len(parts) - trail]), ".".join(target_parts[lead:len(target_parts) - trail]))
        rules[rule] += 1
        examples.setdefault(rule, (name, best))
    hints = []
    for rule, count in rules.most_common(limit):
        source, target = examples[rule]
        also = f" (the same change in {count} names)" if count > 1 else ""
        hints.append(f"rename keys so that {source!r} becomes {target!r}{also}")
    return hints


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
        hints = []
        if any(k.split(".")[0] in ("fc", "classifier") for k in (s.split(" ")[0] for s in shapes)):
            hints.append("the classifier differs: check model.num_classes against the weights' class count")
        if missing and unexpected:
            hints += rename_hints(missing, unexpected, own, state)
            hints.append(f"known layouts: {', '.join(layout.name for layout in LAYOUTS)} (docs/pretrained.md)")
        raise PretrainedError(f"{source} do not fit {arch}: {'; '.join(problems + hints)}")
    model.load_state_dict(state, strict=False)


def import_weights(model: nn.Module, weights: str) -> nn.Module:
    """Load `pretrain.weights` into a zoo model (in place), renamed by its layout, and return it."""
    state, layout, done = map_onto_zoo(read_state_dict(weights, getattr(model, "arch", None)))
    log.info("weights: layout %r (%s)", layout.name, done)
    load_into(model, state, source=f"weights {weights} (layout {layout.name!r}, {done})")
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


def start_from_weights(model: nn.Module, data, cfg: dict, device, *, batch_size: int, seed: int,
                       workers: int) -> dict:
    """The pretrain stage from `cfg["weights"]`: import them, then finetune `cfg["epochs"]` epochs
    with the section's training keys (optimizer, lr, schedule, ...); 0 epochs only evaluates.

    The workflow resolves an unset `pretrain.epochs` before it gets here (0 with weights).
    """
    from .fp32 import pretrain

    weights, epochs = cfg["weights"], cfg.get("epochs")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise PretrainedError(f"pretrain.epochs must be an integer >= 0 with pretrain.weights, got {epochs!r}")
    loader = {"batch_size": batch_size, "seed": seed, "workers": workers}
    if epochs == 0:
        return import_and_evaluate(model, data, weights, device, **loader)
    import_weights(model, weights)
    log.info("pretrain: finetuning the imported weights for %d epochs", epochs)
    return {**pretrain(model, data, cfg, device, **loader), "weights": weights}
