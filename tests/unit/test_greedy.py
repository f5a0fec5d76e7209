"""RFQuant greedy search: budget, single-bit moves, floors, determinism, and a real supernet run."""
import math
import random

import pytest
import torch

from mpq import models
from mpq.cost import CostModel
from mpq.data import build_data, make_loader
from mpq.rfquant.greedy_search import bidirectional_greedy, greedy_policy, uniform_bit_for
from mpq.rfquant.supernet import build_supernet, init_supernet_act_steps, save_supernet

FULL = [6, 5, 4, 3, 2]


@pytest.fixture(scope="module")
def cost():
    return CostModel.from_model(models.create("resnet8", num_classes=10), 16)


def fake_error(w, a, batch):
    """Error rises as bits fall, more for early layers; the batch adds deterministic noise."""
    return 0.3 + 0.0005 * sum((6 - b) * (len(w) - i) for i, b in enumerate(w)) \
        + 0.0003 * sum(6 - b for b in a) + batch


def noise(seed):
    rng = random.Random(seed)
    while True:
        yield rng.random() * 0.01


def run(cost, limits, w_lists=None, a_lists=None, seed=0, **kw):
    n = len(cost.searchable)
    return bidirectional_greedy(w_lists or [FULL] * n, a_lists or [FULL] * n, cost, limits, fake_error,
                                noise(seed), **kw)


def replay(start_w, start_a, lists_w, lists_a, moves):
    """Apply the logged moves one at a time, checking each changes one bit by one candidate."""
    bits = {"w": list(start_w), "a": list(start_a)}
    lists = {"w": lists_w, "a": lists_a}
    for m in moves:
        cands = lists[m.kind][m.layer]
        assert bits[m.kind][m.layer] == m.old
        assert abs(cands.index(m.new) - cands.index(m.old)) == 1
        bits[m.kind][m.layer] = m.new
    return bits["w"], bits["a"]


@pytest.mark.parametrize("budget", ["w4a4", "w3a3", "w2a3", "w3a2"])
def test_ends_under_budget_with_single_bit_moves(cost, budget):
    limit = cost.searchable_budget({"bitops": budget}).total_bitops
    [res] = run(cost, [limit])
    assert res.bitops == cost.bitops(res.w_bits, res.a_bits) <= limit
    n = len(cost.searchable)
    assert replay([5] * n, [5] * n, [FULL] * n, [FULL] * n, res.moves) == (res.w_bits, res.a_bits)
    assert [m.kind for m in res.moves] == sorted((m.kind for m in res.moves), key="wa".index)


def test_never_goes_under_the_floor_or_the_frozen_minimum(cost):
    n = len(cost.searchable)
    w_lists = [FULL] * (n - 2) + [[6, 5, 4, 3]] * 2          # two layers frozen at 3
    limit = cost.searchable_budget({"bitops": "w2a3"}).total_bitops
    [res] = run(cost, [limit], w_lists=w_lists, min_bits=2)
    assert res.bitops <= limit
    assert all(b >= c[-1] for b, c in zip(res.w_bits, w_lists))
    limit3 = cost.searchable_budget({"bitops": "w3a3"}).total_bitops
    [res3] = run(cost, [limit3], min_bits=3)
    assert min(res3.w_bits + res3.a_bits) >= 3 and res3.bitops <= limit3
    with pytest.raises(ValueError, match="floor"):
        run(cost, [cost.searchable_budget({"bitops": "w2a2"}).total_bitops], min_bits=3)


def test_deterministic_for_a_seed(cost):
    limit = cost.searchable_budget({"bitops": "w3a3"}).total_bitops
    first, again = run(cost, [limit], seed=4), run(cost, [limit], seed=4)
    assert [(r.w_bits, r.a_bits, r.moves) for r in first] == [(r.w_bits, r.a_bits, r.moves) for r in again]


def test_several_budgets_run_largest_first_carrying_the_bits(cost):
    limits = [cost.searchable_budget({"bitops": b}).total_bitops for b in ("w3a3", "w4a4", "w2a3")]
    results = run(cost, limits)
    assert [r.limit for r in results] == sorted(limits, reverse=True)
    n = len(cost.searchable)
    w, a = [5] * n, [5] * n
    for r in results:
        assert r.bitops <= r.limit
        w, a = replay(w, a, [FULL] * n, [FULL] * n, r.moves)
        assert (w, a) == (r.w_bits, r.a_bits)


def test_max_steps_guard_ends_a_cycling_search_under_budget(cost):
    limit = cost.searchable_budget({"bitops": "w2a2"}).total_bitops
    n = len(cost.searchable)

    def fragile(w, a, batch):      # so sensitive to bits that raising one always wins: cycles
        return sum((6 - b) * (n - i) for i, b in enumerate(w + a)) * 0.05 + batch

    [res] = bidirectional_greedy([FULL] * n, [FULL] * n, cost, [limit], fragile, noise(0), max_steps=5)
    assert res.bitops <= limit
    assert any(m.new > m.old for m in res.moves)


def test_uniform_bit_is_the_closest_uniform_cost(cost):
    assert uniform_bit_for(cost.uniform_bitops(4, 4) - 1, cost, FULL) == 4
    assert uniform_bit_for(cost.uniform_bitops(3, 3) + 10, cost, FULL) == 3


def test_greedy_policy_on_a_saved_supernet(tmp_path):
    data = build_data({"name": "digits", "image_size": 8})
    cost = CostModel.from_model(models.create("resnet8", num_classes=10), 8)
    torch.manual_seed(0)
    model = models.create("resnet8", num_classes=10)
    state = build_supernet(model, image_size=8, candidates=FULL)
    state.w[2] = [6, 5, 4, 3]
    init_supernet_act_steps(model, state, next(iter(make_loader(data.train, 32, train=True)))[0])
    path = tmp_path / "supernet.pt"
    save_supernet(path, model, state, num_classes=10, holdout={"fraction": 0.1, "seed": 0}, config={})
    policy_cfg = {"search": "greedy", "budget": {"bitops": "w4a4"}}
    settings = {"batch_size": 32, "start_bits": 4, "min_bits": 3}
    w, a, meta = greedy_policy(policy_cfg, cost, path, data, settings, seed=0, device="cpu")
    assert cost.bitops(w, a) <= cost.searchable_budget(policy_cfg["budget"]).total_bitops
    assert min(w + a) >= 3 and meta["method"] == "greedy" and "held-out" in meta["scored_on"]
    assert greedy_policy(policy_cfg, cost, path, data, settings, seed=0, device="cpu")[:2] == (w, a)
    with pytest.raises(ValueError, match="BitOps budget"):
        greedy_policy({"budget": {"size_mb": 0.02}}, cost, path, data, settings, seed=0, device="cpu")
    # The default (the reference): the supernet trained on all training images, scored on them too.
    save_supernet(path, model, state, num_classes=10, holdout={"fraction": 0.0, "seed": 0}, config={})
    meta = greedy_policy(policy_cfg, cost, path, data, settings, seed=0, device="cpu")[2]
    assert meta["scored_on"].startswith(f"{len(data.train)} training images (the supernet's")


# --- the reference's loop, re-derived -------------------------------------------------------------

def reference_greedy(cost, limit, error_of, batches, *, start_bits=5, smallest=2, target_bits=FULL, w_lists=None):
    """util/greedy_search.py `search` of the RFQuant reference, for one BitOps limit, reduced to
    its decisions: per layer the '-' then the '+' trial (an illegal one scores inf), the scores
    1.5 * err / max err + B / max B - 1, the first minimum wins, and the chosen move is applied
    only when the layer's bits are above `smallest`. Stops at BitOps <= limit (the reference: <)."""
    n = len(cost.searchable)
    w_lists = w_lists or [target_bits] * n
    bits = {"w": [start_bits] * n, "a": [start_bits] * n}
    k = uniform_bit_for(limit, cost, target_bits)
    w_target = 0.95 * cost.bitops([k] * n, [start_bits] * n)
    kind = "w"
    for _ in range(2000):      # the reference has no cap; a test case must not need one
        if kind == "w" and cost.bitops(bits["w"], bits["a"]) <= w_target:
            kind = "a"
        if kind == "a" and cost.bitops(bits["w"], bits["a"]) <= limit:
            return bits["w"], bits["a"]
        batch = next(batches)
        lut = []
        for i, b in enumerate(bits[kind]):
            lowest = min(w_lists[i]) if kind == "w" else min(target_bits)
            for mode in "-+":
                if (mode == "-" and (b <= smallest or b == lowest)) or (mode == "+" and b >= max(target_bits)):
                    lut.append(None)
                    continue
                trial = {key: list(v) for key, v in bits.items()}
                trial[kind][i] = target_bits[target_bits.index(b) + (1 if mode == "-" else -1)]
                lut.append((error_of(trial["w"], trial["a"], batch), cost.bitops(trial["w"], trial["a"])))
        top_err = max(e for e, _ in filter(None, lut))
        top_cost = max(c for _, c in filter(None, lut))
        scores = [math.inf if t is None else 1.5 * t[0] / top_err + t[1] / top_cost - 1 for t in lut]
        best = scores.index(min(scores))
        layer, mode = best // 2, "-+"[best % 2]
        b = bits[kind][layer]
        if b > smallest:
            bits[kind][layer] = target_bits[target_bits.index(b) + (1 if mode == "-" else -1)]
    raise AssertionError("the reference loop did not finish")


def jittery_error(w, a, batch):
    """fake_error plus noise drawn per (batch, configuration), so that now and then raising a
    layer that sits at the floor scores best."""
    return fake_error(w, a, 0.0) + 0.1 * random.Random(hash((batch, tuple(w), tuple(a)))).random()


@pytest.mark.parametrize("budget,seed", [("w3a3", 0), ("w3a3", 1), ("w4a3", 2), ("w3a4", 0)])
def test_matches_the_reference_loop_and_never_raises_a_floor_layer(cost, budget, seed):
    n = len(cost.searchable)
    limit = cost.searchable_budget({"bitops": budget}).total_bitops
    w_lists = [FULL] * (n - 1) + [[6, 5, 4, 3]]
    [res] = bidirectional_greedy(w_lists, [FULL] * n, cost, [limit], jittery_error, noise(seed), max_steps=10_000)
    assert res.held > 0, "the case must exercise a chosen raise of a floor layer"
    assert (res.w_bits, res.a_bits) == reference_greedy(cost, limit, jittery_error, noise(seed), w_lists=w_lists)
    assert not [m for m in res.moves if m.new > m.old and m.old <= 2]


def test_a_long_phase_logs_progress_lines(cost, monkeypatch, caplog):
    """Each step scores ~40 forwards: a slow search says where it is (BitOps against the target)."""
    import logging

    from mpq.rfquant import greedy_search

    monkeypatch.setattr(greedy_search, "PROGRESS_EVERY_S", 0.0)
    limit = cost.searchable_budget({"bitops": "w3a3"}).total_bitops
    with caplog.at_level(logging.INFO, logger="mpq"):
        [res] = run(cost, [limit])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("greedy ")]
    assert len(lines) == len(res.moves) + res.held, "one line per step with the check at every step"
    assert lines[0].startswith("greedy w phase step 0:") and "% of the way from the start" in lines[0]
    assert any(line.startswith("greedy a phase step") for line in lines)
    assert f"target {limit / 1e9:.6g}" in lines[-1]
