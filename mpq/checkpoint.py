"""Checkpoint I/O and the loaders that rebuild a model from each checkpoint kind.

Below both mpq.quant and mpq.train (it needs neither), so that every package can read and write
checkpoints without reaching up. Writes are atomic, loading is weights-only, errors are one line.

A checkpoint's `kind` says what its weights are (fp32, indicators, quantized, ptq, supernet). The
module that knows how to rebuild a kind's model registers that function with `register_loader`;
`model_from_checkpoint` dispatches on the kind. A loader is registered when its module is
imported: mpq.build imports those of every model a finetune writes.
"""
from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import torch

from .io import atomic_torch_save
from .errors import InputError

FORMAT = "mpq-checkpoint/1"


class CheckpointError(InputError):
    """A checkpoint that is missing, unreadable or for another model."""


def load_failure(err: Exception, width: int = 160) -> str:
    """Why torch.load failed, as one line of whole words.

    A weights-only refusal opens with torch's generic paragraph (and its advice to load unsafely);
    its specific line (`Unsupported operand 255`, `unsupported GLOBAL posix.system`) is the reason.
    """
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        specific = [ln for ln in lines[1:] if not ln.startswith(("Please file an issue", "Check the documentation"))]
        lines = [f"the weights-only loader refused it: {specific[0]}" if specific else lines[0]]
    reason = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return textwrap.shorten(reason, width=width, placeholder=" ...")


def save_checkpoint(path, *, state_dict, arch: str, num_classes: int, kind: str, config: dict,
                    metrics: dict | None = None, **extra) -> None:
    """kind says what the weights are: 'fp32', 'indicators', 'quantized', 'ptq', 'supernet'."""
    payload = {"format": FORMAT, "kind": kind, "arch": arch, "num_classes": int(num_classes),
               "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
               "config": config, "metrics": metrics or {}}
    payload.update(extra)
    atomic_torch_save(path, payload)


def load_checkpoint(path, *, kind: str | tuple[str, ...] | None = None, arch: str | None = None,
                    num_classes: int | None = None) -> dict:
    """Load with weights_only=True (never runs code from the file) and check what it is."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; run the stage that produces it first")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, wrong format, pickled code
        raise CheckpointError(f"{path}: not a readable checkpoint ({load_failure(e)}); delete it and "
                              f"rerun the stage that writes it") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mpq checkpoint (no 'format: {FORMAT}'); "
                              f"rerun the stage that writes it")
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds and ckpt["kind"] not in kinds:
        raise CheckpointError(f"{path}: holds a {ckpt['kind']!r} checkpoint, expected {' or '.join(kinds)}")
    if arch is not None and ckpt["arch"] != arch:
        raise CheckpointError(f"{path}: checkpoint is for arch {ckpt['arch']!r} but the config asks for "
                              f"{arch!r}; fix model.arch or rerun pretraining")
    if num_classes is not None and ckpt["num_classes"] != num_classes:
        raise CheckpointError(f"{path}: checkpoint has {ckpt['num_classes']} classes but the config asks "
                              f"for {num_classes}; fix model.num_classes or rerun pretraining")
    return ckpt


def load_state(model: torch.nn.Module, state: dict, source: str) -> None:
    """Load a state dict that must fit the model exactly; one error line naming `source` otherwise."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{source}: weights do not fit the model (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}); it was written for another model or "
                              f"quantization setup, rerun the stage that writes it")


# --- model loaders by kind ------------------------------------------------------------------------
ModelLoader = Callable[..., torch.nn.Module]
_LOADERS: dict[str, ModelLoader] = {}


def register_loader(kind: str) -> Callable[[ModelLoader], ModelLoader]:
    """Decorator: `fn(ckpt, source, **options)` rebuilds the model a `kind` checkpoint holds
    (`ckpt` as load_checkpoint returns it, `source` names the file in errors)."""
    def register(fn: ModelLoader) -> ModelLoader:
        known = _LOADERS.get(kind)
        if known is not None and (known.__module__, known.__qualname__) != (fn.__module__, fn.__qualname__):
            raise InputError(f"checkpoint kind {kind!r} already has a loader "
                             f"({known.__module__}.{known.__qualname__})")
        _LOADERS[kind] = fn
        return fn
    return register


def loader_kinds() -> list[str]:
    """The kinds that have a registered model loader."""
    return sorted(_LOADERS)


def model_from_checkpoint(ckpt: dict, source, **options) -> torch.nn.Module:
    """The model a loaded checkpoint holds, rebuilt by the loader of its kind."""
    loader = _LOADERS.get(ckpt["kind"])
    if loader is None:
        raise CheckpointError(f"{source}: no model loader for checkpoint kind {ckpt['kind']!r}; "
                              f"known kinds: {', '.join(loader_kinds()) or 'none'}")
    return loader(ckpt, str(source), **options)
