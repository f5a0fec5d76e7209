"""What the launcher's environment says about this process, readable without importing torch.

torchrun sets WORLD_SIZE and RANK; a plain `python` run sets neither (one process, rank 0).
`mpq.distributed` builds on these; stages that never touch torch (plot_policy, summarize) read
them here.
"""
from __future__ import annotations

import os


def env_world_size() -> int:
    """WORLD_SIZE set by the launcher (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def env_rank() -> int:
    """RANK set by the launcher (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0") or 0)
