"""RFQuant's two-phase bidirectional greedy search over a trained supernet (docs/methods/rfquant.md).

Inference only: every step tries each layer one candidate down and one up, scores the moves by
top-1 error on a fresh batch of TRAINING images (the supernet's own, as in the reference, or a
held-out part of them) and by BitOps, and applies the best; as in the reference, a chosen raise
of a layer sitting at the floor (min_bits) is not applied. Phase 1 moves weight bits towards a
weight target, phase 2 activation bits until the budget holds.
"""
from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..cost import CostModel
# A phase running longer than this logs a progress line, as a long training epoch does (a step
# scores every legal move on one batch: about 40 forwards for ResNet-20, seconds on a CPU).
from ..train.loop import PROGRESS_EVERY_S
from ..config import section_defaults, section_keys
from ..errors import InputError

log = logging.getLogger("mpq")

_SCORING_STREAM = 3   # keeps the scoring order apart from other seeded streams


@dataclass(frozen=True)
class Move:
    kind: str    # 'w' or 'a'
    layer: int
    old: int
    new: int

    def __str__(self) -> str:
        return f"{self.kind}{self.layer}:{self.old}->{self.new}"


@dataclass
class GreedyResult:
    limit: int                 # total BitOps limit
    w_bits: list[int]
    a_bits: list[int]
    bitops: int
    moves: list[Move] = field(default_factory=list)
    held: int = 0              # steps whose best move raised a layer at the floor: not applied
    seconds: float = 0.0       # wall time of this limit's two phases


def uniform_bit_for(limit: int, cost: CostModel, bits: Sequence[int]) -> int:
    """The bit b whose uniform WbAb BitOps is closest to the limit (ties: the lower bit)."""
    return min(sorted(set(bits)), key=lambda b: abs(cost.uniform_bitops(b, b) - limit))


def move_floor(cands: Sequence[int], min_bits: int) -> int:
    """The lowest bits a move may reach in a layer with these candidates: min_bits, or the layer's own
    (frozen) minimum if higher, never above its maximum."""
    return min(max(min_bits, min(cands)), max(cands))


class _Search:
    """State of one search: current bits, per-layer legal lists and the move log."""

    def __init__(self, w_lists, a_lists, cost: CostModel, error_of, batches, *, start_bits: int,
                 min_bits: int, err_weight: float, max_steps: int):
        self.cost, self.error_of, self.batches = cost, error_of, batches
        self.err_weight, self.max_steps, self.min_bits = err_weight, max_steps, min_bits
        # A move may only reach candidates at or above the floor: max(min_bits, frozen minimum).
        self.lists = {kind: [[b for b in sorted(c, reverse=True) if b >= move_floor(c, min_bits)]
                             for c in lists]
                      for kind, lists in (("w", w_lists), ("a", a_lists))}
        self.bits = {kind: [min(c, key=lambda b: (abs(b - start_bits), -b)) for c in self.lists[kind]]
                     for kind in ("w", "a")}
        self.moves: list[Move] = []
        self.held = 0

    def bitops(self, w=None, a=None) -> int:
        return self.cost.bitops(self.bits["w"] if w is None else w, self.bits["a"] if a is None else a)

    def legal_moves(self, kind: str, down_only: bool) -> list[Move]:
        """One candidate down, then one up, for every layer in order (this order breaks ties)."""
        moves = []
        for layer, (cands, bit) in enumerate(zip(self.lists[kind], self.bits[kind])):
            i = cands.index(bit)
            if i + 1 < len(cands):
                moves.append(Move(kind, layer, bit, cands[i + 1]))
            if i > 0 and not down_only:
                moves.append(Move(kind, layer, bit, cands[i - 1]))
        return moves

    def applied(self, move: Move) -> tuple[list[int], list[int]]:
        bits = {k: list(v) for k, v in self.bits.items()}
        bits[move.kind][move.layer] = move.new
        return bits["w"], bits["a"]

    def best(self, moves: list[Move]) -> Move:
        """score = err_weight * err / max err + BitOps / max BitOps - 1; the smallest wins."""
        batch = next(self.batches)
        errors, costs = [], []
        for move in moves:
            w, a = self.applied(move)
            errors.append(float(self.error_of(w, a, batch)))
            costs.append(self.bitops(w, a))
        top_err, top_cost = max(errors), max(costs)
        scores = [self.err_weight * (e / top_err if top_err > 0 else 0.0) + c / top_cost - 1
                  for e, c in zip(errors, costs)]
        return moves[min(range(len(moves)), key=scores.__getitem__)]

    def phase(self, kind: str, target: float, hard: bool) -> int:
        """Move `kind` bits until BitOps <= target; returns the number of steps taken.

        After max_steps (the moves may cycle +1/-1) only downward moves are allowed, so the phase
        ends. With no downward move left, the weight phase (a waypoint) stops; the budget phase fails.
        """
        steps, started, start_bitops = 0, time.perf_counter(), self.bitops()
        last_line = started
        while self.bitops() > target:
            if time.perf_counter() - last_line >= PROGRESS_EVERY_S:
                last_line = time.perf_counter()
                done = 100.0 * (start_bitops - self.bitops()) / (start_bitops - target)
                log.info("greedy %s phase step %d: %.6g GBitOps, target %.6g (%.1f %% of the way from the "
                         "start), %.1f s per step", kind, steps, self.bitops() / 1e9, target / 1e9, done,
                         (last_line - started) / max(1, steps))
            down_only = steps >= self.max_steps
            if steps == self.max_steps:
                log.warning("greedy: %s phase reached max_steps=%d; only downward moves from now on",
                            kind, self.max_steps)
            moves = self.legal_moves(kind, down_only)
            if not any(m.new < m.old for m in moves):
                if not hard:
                    break
                raise InputError(f"greedy search cannot reach {target / 1e9:.6g} GBitOps: every layer's "
                                 f"activation bits are at their floor (min_bits or the frozen candidates); "
                                 f"raise the budget or lower search.greedy.min_bits")
            move = self.best(moves)
            if self.raises_floor_layer(move):
                self.held += 1
            else:
                self.bits[kind][move.layer] = move.new
                self.moves.append(move)
            steps += 1
        return steps

    def raises_floor_layer(self, move: Move) -> bool:
        """The reference scores a floor layer's raise like any move but applies a chosen move only
        to a layer above the floor: if it wins, the step changes nothing (a new batch follows)."""
        return move.new > move.old and move.old <= self.min_bits


def bidirectional_greedy(w_lists, a_lists, cost: CostModel, limits: Sequence[int],
                         error_of: Callable[[list[int], list[int], object], float], batches: Iterator, *,
                         start_bits: int = 5, min_bits: int = 2, err_weight: float = 1.5,
                         phase1_margin: float = 0.95, max_steps: int | None = None) -> list[GreedyResult]:
    """Search every limit (total BitOps), largest first, carrying the bits from one to the next.

    w_lists / a_lists: each layer's current candidates. error_of(w_bits, a_bits, batch) is the
    top-1 error of that configuration on the batch; `batches` yields one batch per step.
    """
    search = _Search(w_lists, a_lists, cost, error_of, batches, start_bits=start_bits, min_bits=min_bits,
                     err_weight=err_weight, max_steps=max_steps or 10 * len(w_lists))
    all_bits = sorted({b for c in list(w_lists) + list(a_lists) for b in c})
    results = []
    for limit in sorted((int(x) for x in limits), reverse=True):
        k = uniform_bit_for(limit, cost, all_bits)
        first, held, started = len(search.moves), search.held, time.perf_counter()
        # The reference: 0.95 * BitOps(w = k, a = start_bits). The current a-bits equal start_bits for the
        # first limit; for later limits they were lowered already, and that target would then
        # skip phase 1 and leave phase 2 unable to reach the budget.
        search.phase("w", phase1_margin * search.bitops([k] * len(w_lists), None), hard=False)
        search.phase("a", limit, hard=True)
        results.append(GreedyResult(limit, list(search.bits["w"]), list(search.bits["a"]), search.bitops(),
                                    search.moves[first:], search.held - held, time.perf_counter() - started))
    return results


# --- scoring on a supernet -----------------------------------------------------------------------

def scoring_batches(dataset, batch_size: int, seed: int, augment: bool, device="cpu") -> Iterator:
    """An endless fixed-seed stream of batches: the evaluation transform, reshuffled every pass."""
    from ..data import make_loader
    from ..data.seeding import generator
    from ..data.splits import take
    from .supernet import calibration_batches

    if augment:
        yield from calibration_batches(dataset, batch_size, seed, device=device)
        return
    for rank in itertools.count():
        order = torch.randperm(len(dataset), generator=generator(seed, _SCORING_STREAM, rank))
        yield from make_loader(take(dataset, order), batch_size, train=False,
                               drop_last=len(dataset) > batch_size, device=device)


@torch.no_grad()
def batch_error(model: nn.Module, w_bits, a_bits, batch) -> float:
    """Top-1 error of the supernet at (w_bits, a_bits), BN in train mode (batch statistics)."""
    from ..quant import set_policy_bits

    set_policy_bits(model, w_bits, a_bits)
    model.train()
    x, y = batch
    return (model(x).argmax(1) != y).float().mean().item()


def greedy_settings(settings: dict | None) -> dict:
    """search.greedy with the schema's defaults (the reference's) for any key not given; unknown
    keys are an error (typos)."""
    settings = {k: v for k, v in (settings or {}).items() if k != "accuracy"}   # an accuracy target's
    unknown = sorted(set(settings) - section_keys("search.greedy"))
    if unknown:
        raise InputError(f"search.greedy: unknown key(s) {unknown}; known: "
                         f"{', '.join(sorted(section_keys('search.greedy')))}")
    return section_defaults("search.greedy", settings)


def greedy_policy(policy_cfg: dict, cost: CostModel, supernet_path, data, settings: dict | None, seed: int,
                  device) -> tuple[list[int], list[int], dict]:
    """Search one policy's BitOps budget on the supernet; returns (w_bits, a_bits, metadata)."""
    from .supernet import load_supernet

    t0 = time.perf_counter()
    [(w, a, meta)] = greedy_front([policy_cfg], cost, load_supernet(supernet_path), supernet_path, data,
                                  settings, seed, device)
    meta["seconds"] = round(time.perf_counter() - t0, 6)
    return w, a, meta


def greedy_front(policy_cfgs: Sequence[dict], cost: CostModel, loaded, supernet_path, data, settings: dict | None,
                 seed: int, device) -> list[tuple[list[int], list[int], dict]]:
    """Search several BitOps budgets on one loaded supernet (`load_supernet`'s triple) in one pass,
    largest first with the bits carried from one to the next (the reference's multi-limit search);
    returns (w_bits, a_bits, metadata) per policy, in the order given. `seconds`: each limit's own."""
    limits = []
    for policy_cfg in policy_cfgs:
        budget = cost.searchable_budget(policy_cfg.get("budget") or {})
        if budget.total_bitops is None or budget.size_bits is not None:
            raise InputError("search 'greedy' takes a BitOps budget only (budget.bitops 'wXaY' or budget.bitops_g)")
        limits.append(budget.total_bitops)
    return greedy_limits(limits, cost, loaded, supernet_path, data, settings, seed, device)


def greedy_limits(limits: Sequence[int], cost: CostModel, loaded, supernet_path, data, settings: dict | None,
                  seed: int, device) -> list[tuple[list[int], list[int], dict]]:
    """greedy_front for total BitOps limits given as integers."""
    from ..data import split_holdout
    from ..io import sha256_file

    cfg = greedy_settings(settings)
    limits = [int(limit) for limit in limits]
    model, state, ckpt = loaded
    if state.names != list(cost.names):
        raise InputError(f"{supernet_path}: supernet layers differ from the model's; rerun train_supernet")
    model.to(device)
    holdout = ckpt["holdout"]
    scored = data.train
    if holdout["fraction"] > 0:
        scored = split_holdout(data.train, holdout["fraction"], holdout["seed"])[1]
    batches = scoring_batches(scored, int(cfg["batch_size"]), seed, bool(cfg["augment"]), device)
    order = sorted(range(len(limits)), key=lambda i: -limits[i])   # as bidirectional_greedy visits them
    results = bidirectional_greedy(
        state.w, state.a, cost, [limits[i] for i in order],
        lambda w, a, batch: batch_error(model, w, a, batch), batches,
        start_bits=int(cfg["start_bits"]), min_bits=int(cfg["min_bits"]), err_weight=float(cfg["err_weight"]),
        phase1_margin=float(cfg["phase1_margin"]), max_steps=cfg["max_steps"])
    digest = sha256_file(supernet_path)
    scored_on = (f"{len(scored)} held-out training images" if holdout["fraction"] > 0
                 else f"{len(scored)} training images (the supernet's training data)")
    out: list = [None] * len(limits)
    for rank, (i, result) in enumerate(zip(order, results)):
        meta = {"method": "greedy", "supernet": str(supernet_path), "supernet_sha256": digest,
                "scored_on": scored_on, "settings": cfg,
                "steps": {"w": sum(m.kind == "w" for m in result.moves), "a": sum(m.kind == "a" for m in result.moves)},
                "held_steps": result.held, "moves": [str(m) for m in result.moves],
                "seconds": round(result.seconds, 6)}
        if len(limits) > 1:   # carried: this limit's moves start from the previous limit's bits
            meta["front"] = {"limits": len(limits), "rank": rank + 1}
        out[i] = (result.w_bits, result.a_bits, meta)
    return out
