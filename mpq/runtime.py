"""What every stage CLI needs: its spec, logging, seeding, device choice, one-line errors for the
project's own error types (mpq/errors.py) and tracebacks for everything else."""
from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from .config import spec_missing_keys
from .errors import InputError, Interrupted, MpqError
from .launch import env_world_size, is_main_process, loaded_distributed

log = logging.getLogger("mpq")
_TIMING: tuple[str, float] | None = None


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
    verbose = verbose and is_main_process()   # under DDP only rank 0 logs progress; others warn and fail
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", force=True)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str = "auto") -> torch.device:
    """cpu or cuda for the config's `device`; under DDP on CUDA, this rank's GPU (LOCAL_RANK)."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: device 'cuda' requested but no CUDA GPU is visible; set device: auto or cpu")
    if name not in ("cpu", "cuda"):
        raise SystemExit(f"error: device {name!r} is unknown; use auto, cpu or cuda")
    if name == "cuda" and env_world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0))
    return torch.device(name)


def setup_device(spec: dict) -> torch.device:
    """Join DDP when launched by torchrun, tune CUDA, and point the data loaders at the device.

    CUDA: cudnn.benchmark (fixed input shapes) and TF32 matmuls; bf16 autocast and channels_last
    are applied by the training loops (mpq.train.loop). CPU runs are left exactly as they were.
    """
    import torch

    from . import distributed
    from .data.loaders import configure

    device = resolve_device(str(spec.get("device", "auto")))
    distributed.init(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    dataset = spec.get("dataset") if isinstance(spec.get("dataset"), dict) else {}
    configure(kind=str(dataset.get("loader") or "auto"), device=device)
    return device


def set_threads(threads: int | None) -> None:
    """Respect the rule's `threads:` so parallel jobs do not oversubscribe the cores."""
    n = threads or int(os.environ.get("MPQ_THREADS", "0") or 0)
    if n > 0:
        import torch

        torch.set_num_threads(n)


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def run_stage(main) -> None:
    """Run a stage's main(); expected problems end as one 'error:' line and exit code 1.

    An interruption (SIGTERM/SIGINT) exits with 128 + signal number after naming the resume file.
    A stage that never sets up a device (plot_policy, summarize) never imports torch.
    """
    setup_logging()
    try:
        main()
        # Every rank leaves the process group together: gloo aborts a rank whose peer is still
        # working while it tears its connections down ("terminate called without an active exception").
        distributed = loaded_distributed()
        if distributed:
            distributed.barrier()
        if _TIMING:
            from .io import write_benchmark

            write_benchmark(_TIMING[0], time.perf_counter() - _TIMING[1])
    except Interrupted as e:
        from .train import resume   # only a training loop turns signals into Interrupted

        where = resume.active()
        kept = f"; the last completed epoch is saved in {where.path}, rerun to continue" if where else ""
        print(f"error: interrupted by {e}{kept}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except MpqError as e:
        if os.environ.get("MPQ_TRACEBACK"):
            raise
        print(f"error: {first_line(e)}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:   # a defect: its traceback goes to the rule's log, then one summary line
        traceback.print_exc()
        print(f"error: unexpected {type(e).__name__}: {first_line(e)} (a defect, not a problem with the "
              f"input: the traceback above says where; please report it)", file=sys.stderr)
        sys.exit(1)
    finally:
        distributed = loaded_distributed()
        if distributed:
            distributed.shutdown()


def stage_parser(doc: str, needs: str, optional: str = ""):
    """argparse parser with the options every stage takes (--spec, --threads).

    `needs`: the spec keys the stage cannot run without, comma-separated; begin_stage names a
    missing one (otherwise it surfaces as a bare `error: 'model'`). `optional`: the others, for --help.
    """
    import argparse

    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--spec", required=True, help=f"JSON (or @file.json) with the config sections: {needs}"
                                                  + (f"; optional: {optional}" if optional else ""))
    ap.set_defaults(spec_needs=tuple(k.strip() for k in needs.split(",")))
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    ap.add_argument("--timing-out", default=None,
                    help="write the stage's wall time here (a benchmark TSV with column s): a declared "
                         "output, so the summary names it as an input and cached rules keep it")
    return ap


def begin_stage(args) -> dict:
    """Parse the spec, pin threads, seed everything and set up the device (DDP, loaders); returns
    the spec."""
    global _TIMING
    _TIMING = (args.timing_out, time.perf_counter()) if getattr(args, "timing_out", None) else None
    spec = parse_spec(args.spec)
    missing = [k for k in getattr(args, "spec_needs", ()) if k not in spec]
    if missing:
        raise InputError(f"--spec has no {', '.join(repr(k) for k in missing)}; give every key this stage "
                         f"needs: {', '.join(args.spec_needs)}")
    unresolved = spec_missing_keys(spec)
    if unresolved:
        raise InputError(f"--spec leaves out {', '.join(unresolved)}; stages fill in no defaults: pass the "
                         "sections resolved, as the workflow does (mpq.config.resolve_spec fills them from the schema)")
    set_threads(args.threads)
    seed_everything(int(spec.get("seed", 0)))
    setup_device(spec)
    return spec
