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
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import Interrupted
from ..io import atomic_torch_save, atomic_write_text

log = logging.getLogger("mpq")
_ACTIVE: "ResumeFile | None" = None


class ResumeFile:
    def __init__(self, path, fingerprint: str):
        self.path, self.fingerprint = Path(path), fingerprint

    @property
    def log_copy(self) -> Path:
        return self.path.with_name(self.path.name + ".log")

    def save(self, *, epoch: int, model, optimizer, extra: dict | None = None) -> None:
        atomic_torch_save(self.path, {"fingerprint": self.fingerprint, "epoch": epoch,
                                      "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                      "extra": dict(extra or {})})
        self._keep_log()

    def _keep_log(self) -> None:
        """Copy the log so far beside the resume file: Snakemake deletes a job's log before it
        runs again, and the resumed run puts the interrupted run's epochs back at its top."""
        source = _log_file()
        if source is None:
            return
        sys.stderr.flush()
        text = f"{LOG_COPY_HEADER} {self.fingerprint}\n" + source.read_text(errors="replace")
        atomic_write_text(self.log_copy, text)

    def replay_log(self) -> None:
        """Write the interrupted run's log (if it belongs to this spec) before this run's lines."""
        if not (self.path.is_file() and self.log_copy.is_file()):
            return
        header, _, text = self.log_copy.read_text(errors="replace").partition("\n")
        if header != f"{LOG_COPY_HEADER} {self.fingerprint}":
            return
        sys.stderr.write(f"{REPLAY_BEGIN}\n{text}{REPLAY_END}\n")
        sys.stderr.flush()

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
            self.log_copy.unlink(missing_ok=True)


LOG_COPY_HEADER = "# mpq log of an interrupted run, spec"
REPLAY_BEGIN = "--- the interrupted run's log (its job's log file was deleted when the job started again) ---"
REPLAY_END = "--- end of the interrupted run's log; this run resumes it ---"


def _log_file() -> Path | None:
    """The regular file this process's stderr goes to (the rule's log), where the OS tells it."""
    try:
        target = Path(os.readlink("/proc/self/fd/2"))
    except OSError:   # not Linux, or no stderr
        return None
    return target if target.is_file() else None


def fingerprint(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def activate(output_path, spec: dict) -> ResumeFile:
    """Make `train_model` in this process resumable through `<output>.resume`."""
    global _ACTIVE
    _ACTIVE = ResumeFile(f"{output_path}.resume", fingerprint(spec))
    from ..distributed import is_main

    if is_main():
        _ACTIVE.replay_log()
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
