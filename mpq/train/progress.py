"""Epoch progress: a tqdm bar on an interactive terminal, one log line per epoch everywhere else.

Log files (the rule's `log:`) get one line per epoch with loss, accuracy, lr, elapsed time and ETA,
e.g. `finetune epoch 3/10 loss=0.41 train_acc=88.2 lr=0.0087 elapsed=12.3s eta=28.7s`. When stderr
is a terminal, a bar over the epochs shows the same numbers and each epoch's line is printed above
it, so the history stays on screen. MPQ_PROGRESS=log forces the log lines, =bar forces the bar.
"""
from __future__ import annotations

import logging
import os
import sys
import time

log = logging.getLogger("mpq")


def _want_bar(stream) -> bool:
    mode = os.environ.get("MPQ_PROGRESS", "auto")
    if mode in ("log", "0", "off"):
        return False
    if mode == "bar":
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _format(metrics: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


class EpochProgress:
    """Call `report(epoch, **metrics)` after every epoch; the bar closes itself after the last one."""

    def __init__(self, total_epochs: int, what: str, start_epoch: int = 0, stream=None):
        self.total, self.what, self.start_epoch = total_epochs, what, start_epoch
        self.t0 = time.perf_counter()
        self.stream = stream if stream is not None else sys.stderr
        self.bar = None
        if _want_bar(self.stream):
            try:
                from tqdm import tqdm
            except ImportError:   # tqdm is a dependency; a broken install still logs
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total_epochs, initial=start_epoch, desc=what, unit="epoch",
                                file=self.stream, dynamic_ncols=True, leave=True)

    def line(self, epoch: int, **metrics) -> str:
        """The log line of an epoch (0-based `epoch`)."""
        done = epoch + 1 - self.start_epoch
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / max(done, 1) * (self.total - epoch - 1)
        parts = _format(metrics)
        return (f"{self.what} epoch {epoch + 1}/{self.total} {parts} "
                f"elapsed={elapsed:.1f}s eta={eta:.1f}s").replace("  ", " ")

    def report(self, epoch: int, **metrics) -> None:
        text = self.line(epoch, **metrics)
        if self.bar is None:
            log.info("%s", text)
            return
        self.bar.write(text, file=self.stream)
        self.bar.set_postfix_str(_format(metrics), refresh=False)
        self.bar.update(epoch + 1 - self.bar.n)
        if epoch + 1 >= self.total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
