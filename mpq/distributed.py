"""Data-parallel training across processes (one per GPU), as launched by torchrun.

`torch.distributed.run` sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous variables; `init`
reads them and joins the process group (NCCL on CUDA, gloo on CPU). Without them everything here
is a no-op for a single process, so the library code calls these helpers unconditionally.

Conventions: the config's batch_size is the global batch (each rank loads batch_size / world);
every rank sees a disjoint shard of each epoch; only rank 0 writes files (see `mpq.io`).
"""
from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist
from torch import nn
from .errors import MachineError
from .launch import env_rank, env_world_size

log = logging.getLogger("mpq")


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init(device: torch.device | str | None = None) -> torch.device | None:
    """Join the process group described by the environment (no-op for a single process).

    On CUDA each process takes the GPU LOCAL_RANK; returns the device this rank should use
    (`device` itself when not distributed or on CPU).
    """
    device = torch.device(device) if device is not None else None
    if env_world_size() <= 1 or is_initialized():
        return _local_device(device) if is_initialized() else device
    if not dist.is_available():
        raise MachineError("WORLD_SIZE > 1 but torch.distributed is not available in this build")
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    log.info("distributed: rank %d of %d (%s)", rank(), world_size(), dist.get_backend())
    return _local_device(device)


def _local_device(device):
    if device is not None and device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def shutdown() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """Whether this process writes outputs: rank 0, or the only process.

    Before the group is joined the launcher's RANK decides, so writes are guarded from the start.
    """
    if is_initialized():
        return dist.get_rank() == 0
    return env_rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def _comm_device() -> torch.device:
    """Where collectives run: the current GPU for NCCL, the CPU for gloo."""
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values) -> list[float]:
    """Element-wise sum over ranks of a list of numbers (returned unchanged for one process)."""
    values = [float(v) for v in values]
    if not is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.cpu().tolist()


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """In place: the mean of `tensor` over ranks."""
    if is_initialized():
        t = tensor.to(_comm_device())
        dist.all_reduce(t)
        t /= world_size()
        if t is not tensor:
            tensor.copy_(t)
    return tensor


def broadcast_state(module: nn.Module, src: int = 0) -> None:
    """Copy parameters and buffers of rank `src` to every rank (identical replicas)."""
    if not is_initialized():
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            buf = t.detach().to(_comm_device())
            dist.broadcast(buf, src)
            if buf is not t:
                t.copy_(buf)


def average_gradients(module: nn.Module) -> None:
    """All-reduce (mean) the gradients of every parameter that has one, in flat buckets.

    What DistributedDataParallel does during backward, for training steps that run several
    forward/backward passes per batch and so cannot be wrapped. Anything that edits gradients
    (clipping, dropping all-zero ones) belongs after this call: see train_epoch's after_average.
    """
    if not is_initialized():
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    _check_same_gradients(grads)
    by_kind: dict = {}
    for g in grads:
        by_kind.setdefault((g.device, g.dtype), []).append(g)
    n = world_size()
    for group in by_kind.values():
        flat = torch.cat([g.reshape(-1) for g in group]).to(_comm_device())
        dist.all_reduce(flat)
        flat /= n
        offset = 0
        for g in group:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def _check_same_gradients(grads: list[torch.Tensor]) -> None:
    """Fail on every rank, instead of hanging or mixing tensors, when the ranks hold different sets
    of gradients (e.g. one rank set an all-zero gradient to None before the average)."""
    layout = torch.tensor([len(grads), sum(g.numel() for g in grads)], dtype=torch.int64, device=_comm_device())
    bounds = torch.cat([layout, -layout])
    dist.all_reduce(bounds, op=dist.ReduceOp.MAX)   # the largest and minus the smallest of each
    if not torch.equal(bounds[:2], -bounds[2:]):
        raise RuntimeError(f"rank {rank()}: ranks disagree on which parameters have gradients "
                           f"(this rank: {len(grads)} tensors, {int(layout[1])} values); gradients "
                           f"must only be edited after average_gradients")


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` inside DistributedDataParallel when distributed; the module itself otherwise.

    Used for one-pass steps, where every trainable parameter takes part in each forward.
    """
    if not is_initialized():
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)
