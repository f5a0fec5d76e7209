"""What every stage CLI needs: its spec, logging, seeding, device choice, one-line errors."""
from __future__ import annotations

import json
import logging
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("mpq")


def parse_spec(text: str) -> dict:
    """The config sections a stage needs, as JSON text or @path/to/file.json."""
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: --spec is not valid JSON ({e}); pass the config sections as JSON")
    if not isinstance(spec, dict):
        raise SystemExit("error: --spec must be a JSON object")
    return spec


def setup_logging(verbose: bool = True) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", force=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: device 'cuda' requested but no CUDA GPU is visible; set device: auto or cpu")
    if name not in ("cpu", "cuda"):
        raise SystemExit(f"error: device {name!r} is unknown; use auto, cpu or cuda")
    return torch.device(name)


def set_threads(threads: int | None) -> None:
    """Respect the rule's `threads:` so parallel jobs do not oversubscribe the cores."""
    n = threads or int(os.environ.get("MPQ_THREADS", "0") or 0)
    if n > 0:
        torch.set_num_threads(n)


def run_stage(main) -> None:
    """Run a stage's main(); expected problems end as one 'error:' line and exit code 1.

    An interruption (SIGTERM/SIGINT) exits with 128 + signal number after naming the resume file.
    """
    from .train import resume

    setup_logging()
    try:
        main()
    except resume.Interrupted as e:
        where = resume.active()
        kept = f"; the last completed epoch is saved in {where.path}, rerun to continue" if where else ""
        print(f"error: interrupted by {e}{kept}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except (ValueError, RuntimeError, FileNotFoundError, KeyError) as e:
        if os.environ.get("MPQ_TRACEBACK"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(1)


def stage_parser(doc: str, spec_help: str):
    """argparse parser with the options every stage takes (--spec, --threads)."""
    import argparse

    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--spec", required=True, help=f"JSON (or @file.json) with the config sections: {spec_help}")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    return ap


def begin_stage(args) -> dict:
    """Parse the spec, pin threads and seed everything; returns the spec."""
    spec = parse_spec(args.spec)
    set_threads(args.threads)
    seed_everything(int(spec.get("seed", 0)))
    return spec
