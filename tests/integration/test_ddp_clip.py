"""Gradient clipping after the cross-rank average: 2 gloo processes on CPU, shards with different
gradients. LIMPQ indicator training and the RFQuant supernet clip every gradient to [-1, 1] after
DDP has averaged them (the references clip after DDP's all-reduce), so one step over 2 ranks must
equal one process clipping the averaged gradient."""
import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from mpq import models
from mpq.data.seeding import sampler_for_step
from mpq.limpq.indicators import build_indicator_model, clip_and_drop_zero_gradients, indicator_step
from mpq.quant import set_uniform_bits
from mpq.quant.range_init import init_act_steps
from mpq.rfquant.supernet import build_supernet, init_supernet_act_steps
from mpq.rfquant.training import clip_gradients, rfquant_config, supernet_step
from mpq.train.loop import train_epoch

# fork: the ranks inherit this process's imports (spawn would import torch and torchvision anew).
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork")]

CANDS = [4, 2]
SIZE = 8


def shard(rank):
    """Rank 0 and rank 1 see very different images, so their gradients differ."""
    g = torch.Generator().manual_seed(10 + rank)
    x = torch.randn(4, 3, SIZE, SIZE, generator=g) * (1.0 if rank == 0 else 25.0)
    return x, torch.randint(0, 10, (4,), generator=g)


def limpq_model():
    """Activation steps initialised on both shards, as lazy initialisation under DDP would."""
    torch.manual_seed(0)
    model = build_indicator_model(models.create("resnet8", num_classes=10), image_size=SIZE, candidates=CANDS,
                                  fixed_bits=((8, 8), (8, 8)))
    for b in CANDS:
        set_uniform_bits(model, b)
        init_act_steps(model, torch.cat([shard(0)[0], shard(1)[0]]))
    return model


def rfquant_model():
    torch.manual_seed(0)
    model = models.create("resnet8", num_classes=10)
    state = build_supernet(model, image_size=SIZE, candidates=CANDS)
    init_supernet_act_steps(model, state, torch.cat([shard(0)[0], shard(1)[0]]))
    return model, state


def limpq_step(m, x, y):
    return indicator_step(m, x, y, CANDS, sampler_for_step(0, 0))


def rfquant_step(state):
    cfg = rfquant_config({"random_paths": 2})
    return lambda m, x, y: supernet_step(m, x, y, state, sampler_for_step(0, 0), cfg)


def one_ddp_step(model, step, after_average, rank):
    """One train_epoch step on this rank's shard with SGD lr 1 (new params = old - gradient)."""
    train_epoch(model, [shard(rank)], torch.optim.SGD(model.parameters(), lr=1.0), "cpu", step=step,
                after_average=after_average)
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        out = {"limpq": one_ddp_step(limpq_model(), limpq_step, clip_and_drop_zero_gradients, rank)}
        model, state = rfquant_model()
        out["rfquant"] = one_ddp_step(model, rfquant_step(state), lambda m: clip_gradients(m, 1.0), rank)
        out["mismatch"] = mismatched_gradients(rank)
        torch.save(out, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def mismatched_gradients(rank):
    """A rank that drops a gradient before the average must fail on both ranks, not hang."""
    model = nn.Linear(3, 2)

    def step(m, x, y):
        loss = m(x).sum()
        loss.backward()
        if rank == 1:
            m.bias.grad = None
        return loss.detach(), torch.zeros(2, 10)

    try:
        train_epoch(model, [(torch.ones(2, 3), torch.zeros(2, dtype=torch.long))],
                    torch.optim.SGD(model.parameters(), lr=0.1), "cpu", step=step)
    except RuntimeError as e:
        return str(e)
    return None


def averaged_gradients(make_model, step):
    """Single process: each shard's raw (unclipped) gradients, averaged."""
    grads = []
    for rank in (0, 1):
        model = make_model()
        x, y = shard(rank)
        model.train()
        step(model, x, y)
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    return {k: (grads[0][k] + grads[1][k]) / 2 for k in grads[0]}, grads


def expected_params(start, avg, drop_zero):
    """SGD lr 1 on the averaged gradient clipped to [-1, 1] (dropped when all-zero, LIMPQ)."""
    out = {}
    for k, p in start.items():
        g = avg.get(k)
        g = None if g is None else g.clamp(-1, 1)
        if g is not None and drop_zero and not g.any():
            g = None
        out[k] = p if g is None else p - g
    return out


def test_clipping_follows_the_cross_rank_average(tmp_path):
    mp.start_processes(worker, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, start_method="fork")
    got = {r: torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)}

    limpq_start = {k: v.detach().clone() for k, v in limpq_model().named_parameters()}
    avg, per_rank = averaged_gradients(limpq_model, limpq_step)
    want = expected_params(limpq_start, avg, drop_zero=True)
    # The shards differ enough that clipping per rank first gives another update.
    per_rank_clip = {k: (per_rank[0][k].clamp(-1, 1) + per_rank[1][k].clamp(-1, 1)) / 2 for k in avg}
    assert any(not torch.allclose(per_rank_clip[k], avg[k].clamp(-1, 1)) for k in avg)
    for rank in (0, 1):
        for k, v in want.items():
            assert torch.allclose(got[rank]["limpq"][k], v, atol=1e-5), (rank, k)

    model, state = rfquant_model()
    rf_start = {k: v.detach().clone() for k, v in model.named_parameters()}

    def fresh_supernet():
        return copy.deepcopy(model)

    avg, per_rank = averaged_gradients(fresh_supernet, rfquant_step(state))
    assert any(not torch.allclose((per_rank[0][k].clamp(-1, 1) + per_rank[1][k].clamp(-1, 1)) / 2,
                                  avg[k].clamp(-1, 1)) for k in avg)
    want = expected_params(rf_start, avg, drop_zero=False)
    for rank in (0, 1):
        for k, v in want.items():
            assert torch.allclose(got[rank]["rfquant"][k], v, atol=1e-5), (rank, k)

    for rank in (0, 1):
        assert got[rank]["mismatch"] and "disagree" in got[rank]["mismatch"]
