"""Atomic file writes: a killed job never leaves a half-written output behind.

Everything is written to a temporary file in the target directory, flushed to disk and renamed
into place, so Snakemake (or a user) sees either the old file or the complete new one.
Under DDP only rank 0 writes: on the other ranks these functions do nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import yaml


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _open_temp(path: Path) -> tuple[int, str]:
    """A temp file beside `path` with the permissions a plain open() would give (mkstemp: 0600)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, tmp


def _writer() -> bool:
    """Whether this process writes files: not a non-zero DDP rank."""
    from .distributed import is_main

    return is_main()


def atomic_write_bytes(path, data: bytes) -> None:
    if not _writer():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _open_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_yaml(path, obj) -> None:
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False, default_flow_style=None, width=100))


def atomic_torch_save(path, obj) -> None:
    import io

    import torch

    if not _writer():
        return
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
