"""What the launcher's environment says about this process, readable without importing torch.

torchrun sets WORLD_SIZE and RANK; a plain `python` run sets neither (one process, rank 0).
`mpq.distributed` builds on these; stages that never touch torch (plot_policy, summarize) read
them here.
"""
from __future__ import annotations

import os
import sys


def env_world_size() -> int:
    """WORLD_SIZE set by the launcher (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def env_rank() -> int:
    """RANK set by the launcher (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0") or 0)


def loaded_distributed():
    """mpq.distributed if this process has loaded it (setup_device does), else None: a process
    that never loaded it joined no process group, and need not import torch to say so."""
    return sys.modules.get("mpq.distributed")


def is_main_process() -> bool:
    """Rank 0 or the only process: mpq.distributed's answer once it is loaded (a group may have
    been joined), else the launcher's RANK."""
    distributed = loaded_distributed()
    return distributed.is_main() if distributed is not None else env_rank() == 0
