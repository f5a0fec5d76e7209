"""Checkpoint I/O: atomic writes, safe loading (weights_only) and one-line errors."""
from __future__ import annotations

from pathlib import Path

import torch

from ..io import atomic_torch_save


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or for another model."""


def load_failure(err: Exception, width: int = 160) -> str:
    """Why torch.load failed, as one line of whole words.

    A weights-only refusal opens with torch's generic paragraph (and its advice to load unsafely);
    its specific line (`Unsupported operand 255`, `unsupported GLOBAL posix.system`) is the reason.
    """
    import textwrap

    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        specific = [ln for ln in lines[1:] if not ln.startswith(("Please file an issue", "Check the documentation"))]
        lines = [f"the weights-only loader refused it: {specific[0]}" if specific else lines[0]]
    reason = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return textwrap.shorten(reason, width=width, placeholder=" ...")


def save_checkpoint(path, *, state_dict, arch: str, num_classes: int, kind: str, config: dict,
                    metrics: dict | None = None, **extra) -> None:
    """kind says what the weights are: 'fp32', 'indicators', 'quantized', 'supernet', 'resume'."""
    payload = {"format": "mpq-checkpoint/1", "kind": kind, "arch": arch, "num_classes": int(num_classes),
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
    if not isinstance(ckpt, dict) or ckpt.get("format") != "mpq-checkpoint/1":
        raise CheckpointError(f"{path}: not an mpq checkpoint (no 'format: mpq-checkpoint/1'); "
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
