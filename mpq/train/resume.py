"""Resumable training: a per-epoch state file next to the stage's output, and signal handling.

A stage declares where its resume file lives (`activate`); `train_model` then saves model,
optimizer and loop state after every epoch and, when started again with the same spec
(fingerprint), continues after the last completed epoch. Data order and random subnets are seeded
from (seed, epoch/step), so a resumed run ends exactly where an uninterrupted one does.
SIGTERM/SIGINT (SLURM preemption, Ctrl-C) raise `Interrupted`; the last epoch's file stays.
"""
from __future__ import annotations

import hashlib
import json
import logging
import signal
from contextlib import contextmanager
from pathlib import Path

import torch

from ..io import atomic_torch_save

log = logging.getLogger("mpq")
_ACTIVE: "ResumeFile | None" = None


class Interrupted(BaseException):
    """Raised by the signal handler; BaseException so generic `except Exception` cannot swallow it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class ResumeFile:
    def __init__(self, path, fingerprint: str):
        self.path, self.fingerprint = Path(path), fingerprint

    def save(self, *, epoch: int, model, optimizer, extra: dict | None = None) -> None:
        atomic_torch_save(self.path, {"fingerprint": self.fingerprint, "epoch": epoch,
                                      "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                      "extra": dict(extra or {})})

    def load(self) -> dict | None:
        """The saved state if it exists and belongs to the same spec; otherwise None."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # a damaged resume file only costs the time it saved
            log.warning("ignoring unreadable resume file %s (%s); starting over", self.path, type(e).__name__)
            return None
        if state.get("fingerprint") != self.fingerprint:
            log.info("resume file %s belongs to another config; starting over", self.path)
            return None
        return state

    def remove(self) -> None:
        from ..distributed import is_main

        if is_main():   # under DDP rank 0 owns the file (it alone wrote it)
            self.path.unlink(missing_ok=True)


def fingerprint(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def activate(output_path, spec: dict) -> ResumeFile:
    """Make `train_model` in this process resumable through `<output>.resume`."""
    global _ACTIVE
    _ACTIVE = ResumeFile(f"{output_path}.resume", fingerprint(spec))
    return _ACTIVE


def active() -> ResumeFile | None:
    return _ACTIVE


def finish() -> None:
    """Drop the resume file once the stage's real output is written."""
    global _ACTIVE
    if _ACTIVE is not None:
        _ACTIVE.remove()
    _ACTIVE = None


@contextmanager
def stop_on_signals():
    """Turn SIGTERM/SIGINT into `Interrupted` while training runs."""
    def handler(signum, frame):
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
