"""LIMPQ search: erasure, exact optimum, golden policy and budget errors (limpq.md sections 5, 6, 8)."""
import itertools
import random
from pathlib import Path

import numpy as np
import pytest

from mpq.search import exact_mckp, ilp
from mpq.search.choice_problem import ChoiceProblem
from mpq.search.ilp import InfeasibleBudget, allowed_bits, solve_ilp, solve_ilp_front
from mpq.search.pulp_milp import MilpUnavailable, highs_available

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
REFERENCE = SHARED_DATA / "limpq-resnet50-indicators.pkl"
CANDS = [6, 5, 4, 3, 2]
MILP_SOLVERS = ["cbc"] + (["highs"] if highs_available() else [])

GOLDEN_W = [6, 3, 4, 5, 4, 3, 5, 4, 4, 5, 3, 3, 4, 3, 3, 3, 5, 4, 3, 4, 4, 3, 4, 3, 2, 3, 2, 3, 2, 3, 3, 2, 2,
            3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]
GOLDEN_A = [6, 4, 6, 6, 6, 3, 4, 6, 3, 4, 5, 3, 5, 5, 6, 3, 4, 5, 3, 4, 5, 3, 4, 4, 4, 6, 5, 5, 4, 5, 5, 4, 6,
            5, 3, 5, 6, 3, 5, 6, 3, 6, 5, 4, 6, 3, 6, 4, 6, 6, 4, 6]
# limpq.md section 8: index -> (kind, exact-mode bit, quirk-mode bit)
QUIRK_CHANGES = {5: ("w", 3, 4), 10: ("w", 3, 4), 16: ("w", 5, 4), 42: ("a", 5, 4), 45: ("a", 3, 2)}


# ------------------------------------------------------------------------------- erasure
def test_erasure_uses_original_values_and_keeps_lower_bits():
    ind = {6: 1.0, 5: 0.5, 4: 0.7, 3: 0.6, 2: 0.9}
    assert allowed_bits(ind, CANDS) == [6, 4, 2]  # 5 < 6 erased; 4 vs original 5 kept; 3 erased
    assert allowed_bits({6: 1.0, 5: 1.0, 4: 0.2}, [6, 5, 4]) == [6, 5]  # ties are not erased
    assert allowed_bits({6: 9.0, 5: 1.0, 4: 0.5}, [6, 5, 4]) == [6]  # the top bit always stays
    assert allowed_bits({8: 0.1, 4: 0.3, 2: 0.2}, [8, 4, 2]) == [8, 4]  # gaps between candidates


def test_erased_pairs_are_not_chosen_and_reported():
    w = [{6: 1.0, 5: 0.5, 4: 2.0}]  # 5-bit weights look cheap but are an artefact
    a = [{6: 1.0, 5: 1.5, 4: 2.0}]
    res = solve_ilp(["l"], w, a, [10], [10], [6, 5, 4], size_budget_bits=50)
    assert res.erased == [("l", "weight", 5)]
    assert res.w_bits == [4]
    off = solve_ilp(["l"], w, a, [10], [10], [6, 5, 4], size_budget_bits=50, erase_non_monotone=False)
    assert off.erased == [] and off.w_bits == [5]


# ------------------------------------------------------------------------- brute force
def _random_instance(rng, n, cands):
    def ind():
        # Mostly rising as bits fall, sometimes not (to exercise erasure).
        vals, v = {}, rng.uniform(0.01, 0.2)
        for b in sorted(cands, reverse=True):
            vals[b] = v
            v = v * rng.uniform(0.7, 2.5)
        return vals

    names = [f"layer{i}" for i in range(n)]
    macs = [rng.randint(1, 10**7) for _ in names]
    params = [rng.randint(1, 10**5) for _ in names]
    return names, [ind() for _ in names], [ind() for _ in names], macs, params


def _brute_force(w_ind, a_ind, macs, params, cands, bitops, size, alpha, erase, avg_w=None, avg_a=None):
    n = len(macs)
    pairs = []
    for l in range(n):
        ws = allowed_bits(w_ind[l], cands) if erase else cands
        as_ = allowed_bits(a_ind[l], cands) if erase else cands
        pairs.append([(w, a) for w in ws for a in as_])
    best = None
    for choice in itertools.product(*pairs):
        if bitops is not None and sum(m * w * a for m, (w, a) in zip(macs, choice)) > bitops:
            continue
        if size is not None and sum(p * w for p, (w, _) in zip(params, choice)) > size:
            continue
        if avg_w is not None and sum(w for w, _ in choice) > n * avg_w + 1e-9:
            continue
        if avg_a is not None and sum(a for _, a in choice) > n * avg_a + 1e-9:
            continue
        value = sum(a_ind[l][a] + alpha * w_ind[l][w] for l, (w, a) in enumerate(choice))
        if best is None or value < best:
            best = value
    return best


def _budgets(rng, macs, params, cands, kind):
    lo, hi = min(cands), max(cands)
    bitops = int(sum(macs) * rng.uniform(lo * lo * 0.9, hi * hi))
    size = int(sum(params) * rng.uniform(lo * 0.9, hi))
    return {"bitops": (bitops, None), "size": (None, size), "both": (bitops, size)}[kind]


def _check_against_brute_force(seed, solver):
    rng = random.Random(seed)
    cands = sorted(rng.sample([2, 3, 4, 5, 6, 8], rng.randint(1, 3)), reverse=True)
    n = rng.randint(1, 4)
    names, w_ind, a_ind, macs, params = _random_instance(rng, n, cands)
    bitops, size = _budgets(rng, macs, params, cands, rng.choice(["bitops", "size", "both"]))
    alpha = rng.choice([2.0, 1.0, 0.5])
    erase = rng.random() < 0.8
    avg_w = rng.choice([None, None, None, rng.uniform(min(cands), max(cands))])
    expected = _brute_force(w_ind, a_ind, macs, params, cands, bitops, size, alpha, erase, avg_w)
    kwargs = dict(bitops_budget=bitops, size_budget_bits=size, alpha=alpha, erase_non_monotone=erase,
                  avg_w_max=avg_w, solver=solver)
    if expected is None:
        with pytest.raises(InfeasibleBudget):
            solve_ilp(names, w_ind, a_ind, macs, params, cands, **kwargs)
        return False
    res = solve_ilp(names, w_ind, a_ind, macs, params, cands, **kwargs)
    assert res.objective == pytest.approx(expected, rel=1e-12, abs=1e-12), seed
    if bitops is not None:
        assert sum(m * w * a for m, w, a in zip(macs, res.w_bits, res.a_bits)) <= bitops
    if size is not None:
        assert sum(p * w for p, w in zip(params, res.w_bits)) <= size
    if avg_w is not None:
        assert sum(res.w_bits) <= n * avg_w + 1e-9
    assert res.status == "Optimal"
    return True


@pytest.mark.parametrize("solver", ["auto", "exact"])
def test_exact_search_matches_brute_force(solver):
    solved = sum(_check_against_brute_force(seed, solver) for seed in range(300))
    assert solved > 150  # most random budgets are feasible; the rest check InfeasibleBudget


def test_exact_search_with_a_poor_incumbent_matches_brute_force(monkeypatch):
    # A one-state beam gives a weak upper bound, so the proof phase must do the work.
    monkeypatch.setattr(exact_mckp, "BEAM_WIDTHS", (1,))
    for seed in range(8):
        rng = random.Random(1000 + seed)
        names, w_ind, a_ind, macs, params = _random_instance(rng, 5, [6, 4, 2])
        bitops, size = _budgets(rng, macs, params, [6, 4, 2], "both")
        expected = _brute_force(w_ind, a_ind, macs, params, [6, 4, 2], bitops, size, 2.0, False)
        res = solve_ilp(names, w_ind, a_ind, macs, params, [6, 4, 2], bitops_budget=bitops,
                        size_budget_bits=size, erase_non_monotone=False, solver="exact")
        assert res.objective == pytest.approx(expected, rel=1e-12), seed


@pytest.mark.parametrize("rows, states", [(1, 400), (2, 400), (2, 100)])  # 2 rows, 100: all pairs
def test_state_dominance_filter(rows, states):
    rng = np.random.default_rng(rows + states)
    usage = rng.integers(0, 6, size=(states, rows))
    value = rng.integers(0, 6, size=states).astype(float)
    kept = exact_mckp.undominated_states(usage, value)
    dominates = lambda i, j: np.all(usage[i] <= usage[j]) and value[i] <= value[j]  # noqa: E731
    kept_set = set(kept.tolist())
    assert len(kept_set) == len(kept)
    for i in kept_set:  # no kept state is dominated by another kept state
        assert not any(dominates(j, i) for j in kept_set if j != i)
    for i in set(range(states)) - kept_set:  # every dropped state has a kept dominator
        assert any(dominates(j, i) for j in kept_set)


def test_pairwise_dominance_filter_matches_the_staircase():
    """Small state sets take the all-pairs path: same states, same order as the staircase loop."""
    rng = np.random.default_rng(7)
    for states in (1, 2, 17, exact_mckp._PAIRWISE_MAX):
        usage = rng.integers(0, 8, size=(states, 2))
        value = rng.integers(0, 8, size=states).astype(float)
        pairwise = exact_mckp.undominated_states(usage, value)
        padded = exact_mckp.undominated_states(  # far-off states push it onto the staircase
            np.vstack([usage, np.full((exact_mckp._PAIRWISE_MAX, 2), 99)]),
            np.concatenate([value, np.full(exact_mckp._PAIRWISE_MAX, 99.0)]))
        assert pairwise.tolist() == padded[padded < states].tolist()


def test_dominated_options_are_dropped_before_solving():
    obj = np.array([[1.0, 2.0, 1.0, 0.5]])
    costs = np.array([[[5, 6, 5, 9]]], dtype=np.int64)  # option 1 is worse than 0; 2 ties 0
    labels = [[(6, 6), (5, 6), (4, 6), (3, 6)]]
    pruned = ChoiceProblem(obj, costs, np.array([10]), labels).without_dominated()
    assert pruned.labels == [[(6, 6), (3, 6)]]
    assert pruned.objective.tolist() == [[1.0, 0.5]]


@pytest.mark.parametrize("solver", MILP_SOLVERS)
def test_milp_matches_brute_force(solver):
    solved = sum(_check_against_brute_force(seed, solver) for seed in range(12))
    assert solved > 4


def _limpq_like(rng, n, cands=CANDS):
    """Indicators shaped like the reference file: growing as bits fall, act about 3x weight."""
    w_ind, a_ind = [], []
    for _ in range(n):
        w0, a0 = rng.uniform(0.005, 0.05), rng.uniform(0.05, 0.3)
        w_ind.append({b: w0 * rng.uniform(1.3, 1.8) ** (max(cands) - b) * rng.uniform(0.95, 1.05) for b in cands})
        a_ind.append({b: a0 * rng.uniform(1.3, 1.6) ** (max(cands) - b) for b in cands})
    macs = [rng.choice([1, 2, 4]) * rng.randint(10**7, 2 * 10**8) for _ in range(n)]
    params = [rng.randint(10**4, 3 * 10**6) for _ in range(n)]
    return [f"l{i}" for i in range(n)], w_ind, a_ind, macs, params


@pytest.mark.parametrize("seed, n, budgets", [(1, 19, "both"), (2, 52, "both"), (3, 40, "bitops"),
                                              (4, 30, "size")])
def test_exact_search_matches_milp_on_network_sized_problems(seed, n, budgets):
    rng = random.Random(seed)
    names, w_ind, a_ind, macs, params = _limpq_like(rng, n)
    kw = {}
    if budgets in ("both", "bitops"):
        kw["bitops_budget"] = int(rng.uniform(9, 16) * sum(macs))
    if budgets in ("both", "size"):
        kw["size_budget_bits"] = int(rng.uniform(2.5, 4.5) * sum(params))
    exact = solve_ilp(names, w_ind, a_ind, macs, params, CANDS, solver="exact", **kw)
    milp = solve_ilp(names, w_ind, a_ind, macs, params, CANDS, solver="cbc", **kw)
    assert exact.solver == "exact-mckp" and milp.solver == "cbc"
    assert exact.objective == pytest.approx(milp.objective, rel=1e-9)


@pytest.mark.parametrize("seed, n, sweep", [(11, 4, "bitops"), (12, 3, "size"), (13, 4, "bitops")])
def test_front_matches_brute_force_at_every_budget(seed, n, sweep):
    """One front search: every point is the brute-force optimum of its own budget."""
    rng = random.Random(seed)
    cands = [6, 4, 2]
    names, w_ind, a_ind, macs, params = _random_instance(rng, n, cands)
    scale = sum(macs) if sweep == "bitops" else sum(params)
    lo, hi = (4 * 1.05, 36) if sweep == "bitops" else (2 * 1.05, 6)
    budgets = [int(scale * (lo + (hi - lo) * k / 7)) for k in (3, 0, 7, 1, 5, 2, 6, 4)]   # any order
    front = solve_ilp_front(names, w_ind, a_ind, macs, params, cands, sweep=sweep, budgets=budgets,
                            erase_non_monotone=False)   # erasure could lift the floor above the budgets
    for budget, res in zip(budgets, front):
        bitops, size = (budget, None) if sweep == "bitops" else (None, budget)
        assert res.objective == pytest.approx(_brute_force(w_ind, a_ind, macs, params, cands, bitops, size, 2.0, False))
        used = (sum(m * w * a for m, w, a in zip(macs, res.w_bits, res.a_bits)) if sweep == "bitops"
                else sum(p * w for p, w in zip(params, res.w_bits)))
        assert used <= budget and res.status == "Optimal" and res.solver == "exact-mckp-front"


def test_front_equals_single_budget_optima_on_a_network_sized_problem():
    """A 12-point BitOps front under a fixed size budget, each point against its own exact solve."""
    rng = random.Random(5)
    names, w_ind, a_ind, macs, params = _limpq_like(rng, 40)
    budgets = [int(f * sum(macs)) for f in np.linspace(9, 20, 12)]
    size = int(4.0 * sum(params))
    front = solve_ilp_front(names, w_ind, a_ind, macs, params, CANDS, sweep="bitops", budgets=budgets,
                            size_budget_bits=size)
    for budget, res in zip(budgets, front):
        single = solve_ilp(names, w_ind, a_ind, macs, params, CANDS, bitops_budget=budget, size_budget_bits=size,
                           solver="exact")
        assert res.objective == pytest.approx(single.objective, rel=1e-12)
    assert [r.objective for r in front] == sorted((r.objective for r in front), reverse=True)


def test_a_wrong_gap_hint_only_changes_the_incumbent():
    """The neighbour's duality gap narrows the first beam; too small (nothing fits) or too large,
    the search still proves the same optimum, and reports its own gap."""
    rng = np.random.default_rng(3)
    for _ in range(10):
        n, p = 14, 4
        obj = rng.uniform(0.0, 1.0, size=(n, p))
        costs = rng.integers(1, 50, size=(2, n, p)).astype(np.int64)
        rhs = (costs.min(axis=2).sum(axis=1) + costs.max(axis=2).sum(axis=1)) // 2
        problem = ChoiceProblem(obj, costs, rhs, [[(8 - q, 8) for q in range(p)]] * n)
        plain, _, gap = exact_mckp._solve(problem)
        assert gap >= -1e-9
        for hint in (0.0, gap / 4, gap, 100 * gap):
            hinted, _, hinted_gap = exact_mckp._solve(problem, gap_hint=hint)
            assert problem.value(hinted) == pytest.approx(problem.value(plain), rel=1e-12)
            assert problem.is_feasible(hinted) and hinted_gap == pytest.approx(gap, abs=1e-12)


def test_front_refuses_an_unreachable_smallest_budget():
    rng = random.Random(3)
    names, w_ind, a_ind, macs, params = _limpq_like(rng, 10)
    with pytest.raises(InfeasibleBudget, match="bitops budget"):
        solve_ilp_front(names, w_ind, a_ind, macs, params, CANDS, sweep="bitops",
                        budgets=[sum(macs), 10 * sum(macs)])


def test_same_inputs_same_result():
    rng = random.Random(7)
    names, w_ind, a_ind, macs, params = _limpq_like(rng, 30)
    kw = dict(bitops_budget=12 * sum(macs), size_budget_bits=3 * sum(params))
    first = solve_ilp(names, w_ind, a_ind, macs, params, CANDS, **kw)
    second = solve_ilp(names, w_ind, a_ind, macs, params, CANDS, **kw)
    assert (first.w_bits, first.a_bits, first.objective) == (second.w_bits, second.a_bits, second.objective)


# ----------------------------------------------------------------------- fallbacks
def _small_problem():
    rng = random.Random(11)
    names, w_ind, a_ind, macs, params = _limpq_like(rng, 12)
    return (names, w_ind, a_ind, macs, params, CANDS), dict(bitops_budget=12 * sum(macs),
                                                           size_budget_bits=3 * sum(params))


def test_greedy_is_feasible_labelled_and_not_better_than_optimum():
    args, kw = _small_problem()
    greedy = solve_ilp(*args, solver="greedy", **kw)
    best = solve_ilp(*args, **kw)
    assert (greedy.solver, greedy.status) == ("greedy", "Heuristic")
    assert greedy.objective >= best.objective - 1e-12
    macs, params = args[3], args[4]
    assert sum(m * w * a for m, w, a in zip(macs, greedy.w_bits, greedy.a_bits)) <= kw["bitops_budget"]
    assert sum(p * w for p, w in zip(params, greedy.w_bits)) <= kw["size_budget_bits"]


def test_auto_hands_over_to_milp_then_greedy(monkeypatch):
    args, kw = _small_problem()
    best = solve_ilp(*args, **kw)
    assert best.solver == "exact-mckp"

    monkeypatch.setattr(exact_mckp, "MAX_STATES", 1)
    milp = solve_ilp(*args, **kw)
    assert milp.solver == MILP_SOLVERS[-1] and milp.objective == pytest.approx(best.objective, rel=1e-9)
    with pytest.raises(exact_mckp.SearchTooLarge, match="solver='auto'"):
        solve_ilp(*args, solver="exact", **kw)

    def unavailable(problem, solver, time_limit=None):
        raise MilpUnavailable(solver)

    monkeypatch.setattr(ilp, "solve_milp", unavailable)
    fallback = solve_ilp(*args, **kw)
    assert (fallback.solver, fallback.status) == ("greedy-fallback", "Heuristic")


# --------------------------------------------------------------------------- errors
def test_infeasible_bitops_budget_names_smallest_value():
    names, w, a = ["x", "y"], [{4: 1.0, 2: 2.0}] * 2, [{4: 1.0, 2: 2.0}] * 2
    macs = [10**9, 5 * 10**8]  # lowest bits: 2*2*(1.5e9) = 6 G
    with pytest.raises(InfeasibleBudget) as err:
        solve_ilp(names, w, a, macs, [10, 10], [4, 2], bitops_budget=5_999_999_999)
    msg = str(err.value)
    assert "5.1000 G" not in msg and "6.0000 G" in msg and "6.0000 G" in msg.split("smallest")[1]
    assert "raise the budget or add lower candidates" in msg and "\n" not in msg
    solve_ilp(names, w, a, macs, [10, 10], [4, 2], bitops_budget=6_000_000_000)  # exactly reachable


def test_infeasible_size_budget_reports_bits_and_mib():
    w = [{4: 1.0, 3: 1.5, 2: 2.0}]
    with pytest.raises(InfeasibleBudget, match=r"smallest achievable 8388608 bits \(1\.0000 MiB\)"):
        solve_ilp(["x"], w, w, [1], [2**22], [4, 3, 2], size_budget_bits=2**23 - 1)


def test_infeasibility_respects_erasure():
    w = [{4: 1.0, 2: 0.5}]  # 2-bit weights erased, so the lowest reachable is 4 bits
    with pytest.raises(InfeasibleBudget, match="smallest achievable 40 bits"):
        solve_ilp(["x"], w, [{4: 1.0, 2: 2.0}], [1], [10], [4, 2], size_budget_bits=20)


def test_needs_a_budget():
    with pytest.raises(ValueError, match="needs a budget"):
        solve_ilp(["x"], [{4: 1.0}], [{4: 1.0}], [1], [1], [4])


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="no value for bits"):
        solve_ilp(["x"], [{4: 1.0}], [{4: 1.0}], [1], [1], [4, 2], size_budget_bits=10)
    with pytest.raises(ValueError, match="unknown solver"):
        solve_ilp(["x"], [{4: 1.0}], [{4: 1.0}], [1], [1], [4], size_budget_bits=10, solver="gurobi")
    with pytest.raises(ValueError, match="macs has 2 entries"):
        solve_ilp(["x"], [{4: 1.0}], [{4: 1.0}], [1, 2], [1], [4], size_budget_bits=10)


# ---------------------------------------------------------------------------- golden
@pytest.fixture(scope="module")
def golden_inputs():
    if not REFERENCE.is_file():
        pytest.skip("../shared/data is absent")
    import mpq.models
    from mpq.cost import CostModel
    from mpq.importance_file import read_importance

    def build(quirk):
        cost = CostModel.from_model(mpq.models.create("resnet50", num_classes=1000), 224, float_hw_quirk=quirk)
        imp = read_importance(REFERENCE, expected_names=cost.names, candidates=CANDS)
        return cost, imp

    return {"exact": build(False), "quirk": build(True)}


def _golden_solve(cost, imp, solver):
    budget = cost.searchable_budget({"bitops": "w3a4", "compression_ratio": 12.2})
    res = solve_ilp(cost.names, [imp.weight[n] for n in cost.names], [imp.act[n] for n in cost.names],
                    cost.macs, cost.params, CANDS, bitops_budget=budget.bitops, size_budget_bits=budget.size_bits,
                    alpha=2.0, erase_non_monotone=True, solver=solver)
    return res, budget


@pytest.mark.parametrize("solver", ["auto", "exact"] + MILP_SOLVERS)
def test_golden_resnet50_policy(golden_inputs, solver):
    cost, imp = golden_inputs["exact"]
    res, budget = _golden_solve(cost, imp, solver)
    assert res.objective == pytest.approx(4.630866, abs=1e-6)
    assert res.status == "Optimal"
    assert res.w_bits == GOLDEN_W
    assert res.a_bits == GOLDEN_A
    assert round(sum(res.w_bits) / 52, 4) == 2.9423 and round(sum(res.a_bits) / 52, 4) == 4.6731
    assert res.erased == [("layer4.0.downsample.0", "weight", 5), ("layer4.2.conv3", "weight", 5)]
    assert budget.bitops == 47_629_467_648 and cost.fixed_bitops == 7_683_964_928
    assert round(cost.bitops(res.w_bits, res.a_bits) / 1e9, 4) == 55.3006
    assert round(budget.total_bitops / 1e9, 4) == 55.3134
    assert round(cost.compression_ratio(res.w_bits), 4) == 12.2037
    assert round(cost.size_mib(res.w_bits), 4) == 7.9719
    assert round(cost.fp32_size_mib, 4) == 97.2859


@pytest.mark.parametrize("solver", ["auto"] + MILP_SOLVERS)
def test_golden_float_quirk_reproduces_published_policy(golden_inputs, solver):
    cost, imp = golden_inputs["quirk"]
    res, budget = _golden_solve(cost, imp, solver)
    assert res.objective == pytest.approx(4.617439, abs=1e-6)
    diff = {i for i in range(52) if (res.w_bits[i], res.a_bits[i]) != (GOLDEN_W[i], GOLDEN_A[i])}
    assert diff == set(QUIRK_CHANGES)
    for i, (kind, exact_bit, quirk_bit) in QUIRK_CHANGES.items():
        got, golden = (res.w_bits, GOLDEN_W) if kind == "w" else (res.a_bits, GOLDEN_A)
        assert (golden[i], got[i]) == (exact_bit, quirk_bit)
    assert round(cost.compression_ratio(res.w_bits), 4) == 12.2029
    assert round(cost.bitops(res.w_bits, res.a_bits) / 1e9, 4) == 56.0346
    assert round(budget.total_bitops / 1e9, 4) == 56.0360


def test_avg_weight_bits_budget_bounds_the_effective_bits(golden_inputs):
    """ModelOpt's effective-bits budget: weight bits over weights of the whole model stay within it
    where the BitOps budget alone would spend more."""
    cost, imp = golden_inputs["exact"]

    def effective(budget_cfg):
        budget = cost.searchable_budget(budget_cfg)
        res = solve_ilp(cost.names, [imp.weight[n] for n in cost.names], [imp.act[n] for n in cost.names],
                        cost.macs, cost.params, CANDS, bitops_budget=budget.bitops,
                        size_budget_bits=budget.size_bits, alpha=2.0, erase_non_monotone=True, solver="exact")
        return cost.size_bits(res.w_bits) / cost.total_params

    assert effective({"bitops": "w4a4", "avg_weight_bits": 3.0}) <= 3.0 < effective({"bitops": "w4a4"})


def _phi(obj, norm, mu):
    """The Lagrangian dual at mu, straight from its definition."""
    return float((obj + np.einsum("r,rnp->np", mu, norm)).min(axis=1).sum() - mu.sum())


@pytest.mark.parametrize("seed", range(20))
def test_line_search_lands_on_the_best_kink_of_the_dual(seed):
    """Along one multiplier the dual is concave and piecewise linear: its maximum is at 0 or at a
    kink, where two options of a layer tie; the tangent search must find the best of them."""
    rng = np.random.default_rng(seed)
    obj = rng.uniform(0, 1, size=(6, 4))
    norm = rng.uniform(0, 0.5, size=(1, 6, 4))

    def evaluate(t):
        trial = obj + t * norm[0]
        arg = trial.argmin(axis=1)
        return float(trial.min(axis=1).sum()) - t, float(norm[0][np.arange(6), arg].sum()) - 1.0

    kinks = [0.0] + [(obj[l, p] - obj[l, q]) / (norm[0, l, q] - norm[0, l, p])
                     for l in range(6) for p in range(4) for q in range(4)
                     if norm[0, l, q] != norm[0, l, p] and (obj[l, p] - obj[l, q]) / (norm[0, l, q] - norm[0, l, p]) > 0]
    best = max(evaluate(t)[0] for t in kinks)
    t = exact_mckp._maximise_along(evaluate, guess=float(rng.uniform(0.1, 5)))
    assert evaluate(t)[0] == pytest.approx(best, rel=1e-12, abs=1e-12)


def test_the_dual_ascent_climbs_from_its_start_and_returns_phi_at_its_multipliers():
    """A neighbouring budget's multipliers start the ascent; any start gives a valid bound, and the
    ascent never ends below where it began."""
    rng = np.random.default_rng(3)
    obj = rng.uniform(0, 1, size=(12, 5))
    norm = rng.uniform(0, 0.3, size=(2, 12, 5))
    mu, phi = exact_mckp.lagrangian_multipliers(obj, norm)
    warm_mu, warm_phi = exact_mckp.lagrangian_multipliers(obj, norm, start=mu * 1.3)
    assert phi == pytest.approx(_phi(obj, norm, mu), rel=1e-12)
    assert warm_phi == pytest.approx(_phi(obj, norm, warm_mu), rel=1e-12)
    assert phi >= _phi(obj, norm, np.zeros(2)) and warm_phi >= _phi(obj, norm, mu * 1.3)
    assert np.all(mu >= 0) and np.all(warm_mu >= 0)
