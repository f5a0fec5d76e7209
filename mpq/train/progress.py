"""One log line per epoch with loss, accuracy, lr, time and ETA (logs go to the rule's log file)."""
from __future__ import annotations

import logging
import time

log = logging.getLogger("mpq")


class EpochProgress:
    def __init__(self, total_epochs: int, what: str, start_epoch: int = 0):
        self.total, self.what, self.start_epoch = total_epochs, what, start_epoch
        self.t0 = time.perf_counter()

    def report(self, epoch: int, **metrics) -> None:
        done = epoch + 1 - self.start_epoch
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / max(done, 1) * (self.total - epoch - 1)
        parts = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        log.info("%s epoch %d/%d %s elapsed=%.1fs eta=%.1fs", self.what, epoch + 1, self.total, parts,
                 elapsed, eta)
