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
from .errors import InputError


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
    from .launch import is_main_process

    return is_main_process()


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


def timing_path(output) -> Path:
    """Where a stage writes the wall times of `output` (policy.yaml -> policy.timing.json): beside
    it, not inside it, so that identical runs write identical outputs."""
    output = Path(output)
    return output.with_name(output.name.split(".", 1)[0] + ".timing.json")


def write_benchmark(path, seconds: float) -> None:
    """A stage's wall time as the workflow's benchmark TSV (column `s`), which summary.csv reads."""
    atomic_write_text(path, f"s\n{seconds:.4f}\n")


def write_timing(output, **seconds) -> None:
    atomic_write_json(timing_path(output), {k: round(float(v), 3) for k, v in seconds.items() if v is not None})


def atomic_torch_save(path, obj) -> None:
    import io

    import torch

    if not _writer():
        return
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def read_text_input(path, what: str, usual_name: str | None = None) -> str:
    """The text of a file the user named, refusing a folder or binary data with one line that says
    what was expected (a checkpoint or a JPEG otherwise fails as "'utf-8' codec can't decode byte
    0x80"). `usual_name`: the file a folder given by mistake may hold (policy.yaml), suggested
    when it is there. A missing file is left to the caller, whose hint depends on the file."""
    path = Path(path)
    if path.is_dir():
        inside = path / usual_name if usual_name else None
        hint = f"did you mean {inside}?" if inside and inside.is_file() else f"give {what} itself"
        raise InputError(f"{path}: is a folder, not {what}; {hint}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\0" in text[:8192]:
        raise InputError(f"{path}: is binary data (a checkpoint or an image?), not {what}; pass {what} instead")
    return text


def yaml_error_where(err: yaml.YAMLError) -> str:
    """'line L, column C: problem' of a YAML syntax error, on one line (PyYAML's own text spans
    several lines, and the first of them does not say where). An unclosed bracket is noticed
    lines later, so the line where the enclosing construct starts is given too."""
    def at(mark):
        return f"line {mark.line + 1}, column {mark.column + 1}"

    problem, problem_mark = getattr(err, "problem", None), getattr(err, "problem_mark", None)
    context, context_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
    if problem_mark is None:
        return str(err).splitlines()[0] if str(err).strip() else type(err).__name__
    text = f"{at(problem_mark)}: {problem}"
    if context:
        elsewhere = context_mark is not None and context_mark.line != problem_mark.line
        text += f" ({context} that starts at {at(context_mark)})" if elsewhere else f" ({context})"
    return text


def read_yaml(path, what: str, usual_name: str | None = None):
    """A YAML file the user named, parsed; a syntax error names the file, line and column."""
    text = read_text_input(path, what, usual_name)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InputError(f"{path}: YAML syntax error at {yaml_error_where(e)}; fix that line") from None


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
