"""OMPQ: linear CKA, units, orthogonality, the importance file, the LP and its rounding
(docs/methods/ompq.md, with the published test vectors)."""
import copy
import itertools
import json
import pickle
import runpy
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from mpq import models
from mpq.checkpoint import save_checkpoint
from mpq.cost import CostModel
from mpq.importance_file import UntrustedPickleError
from mpq.ompq.cka import centered_gram, linear_cka, orm_matrix
from mpq.ompq.lp import (Row, fractional_knapsack, layer_bits, lp_coefficients, ompq_policy, round_bits,
                         solve_lp)
from mpq.ompq.orthogonality import (compute_ompq_importance, importance_theta, read_ompq_importance,
                                    to_builtins, unit_gammas, write_ompq_importance)
from mpq.ompq.search import search_ompq
from mpq.ompq.units import ompq_units

REPO = Path(__file__).resolve().parents[2]


def run_stage_in_process(name, *argv):
    """Run a stage CLI here: a new process would spend seconds importing torch."""
    saved = sys.argv
    sys.argv = [name, *argv]
    try:
        runpy.run_path(str(REPO / "stages" / f"{name}.py"), run_name="__main__")
    finally:
        sys.argv = saved


def _features(seed, n=16, d=40):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------------ CKA
def test_cka_is_one_for_identical_features_and_symmetric():
    x, y = _features(0), _features(1, d=25)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), abs=1e-12)
    assert 0.0 <= linear_cka(x, y) < 1.0


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling():
    x, y = _features(2), _features(3, d=30)
    q, _ = torch.linalg.qr(_features(4, n=40, d=40))
    base = linear_cka(x, y)
    assert linear_cka(x @ q, y) == pytest.approx(base, abs=1e-10)
    assert linear_cka(7.5 * x, 0.01 * y) == pytest.approx(base, abs=1e-10)
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-10)       # ORM = 1 for Y = X Q


def test_cka_matches_the_spec_formula_with_h_k_h():
    x, y = _features(5).flatten(1), _features(6, d=12)
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - torch.ones(n, n, dtype=torch.float64) / n
    kx, ky = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    expected = float((kx * ky).sum() / (kx.norm() * ky.norm()))
    assert linear_cka(x, y) == pytest.approx(expected, abs=1e-12)
    assert torch.allclose(centered_gram(x), kx)


def test_orm_matrix_is_symmetric_with_unit_diagonal_and_rejects_constant_features():
    grams = [centered_gram(_features(s, d=10 + s)) for s in range(4)]
    orm = orm_matrix(grams)
    assert np.allclose(orm, orm.T) and np.allclose(np.diag(orm), 1.0)
    assert ((orm >= 0) & (orm <= 1)).all()
    with pytest.raises(ValueError, match="identical for every sample"):
        orm_matrix([grams[0], centered_gram(torch.ones(16, 5))], ["a", "b"])


# --------------------------------------------------------------------------- gamma and theta
def test_theta_gives_the_most_orthogonal_unit_the_largest_importance():
    orm = np.array([[1.0, 0.9, 0.2], [0.9, 1.0, 0.5], [0.2, 0.5, 1.0]])
    gamma = unit_gammas(orm)
    assert gamma.tolist() == pytest.approx([1.1, 1.4, 0.7])
    theta = importance_theta(gamma, 3.0)
    assert list(np.argsort(-theta)) == [2, 0, 1]                       # smaller gamma, larger theta
    assert theta.max() == pytest.approx(1.0)
    assert importance_theta(gamma, 0.0).tolist() == [1.0, 1.0, 1.0]    # beta -> 0: flat
    assert importance_theta(gamma * 10, 100.0).max() == 1.0            # no underflow to all zeros
    with pytest.raises(ValueError, match="beta"):
        importance_theta(gamma, -1.0)


# ------------------------------------------------------------------------------------ units
@pytest.mark.parametrize("arch, qat, ptq", [("resnet8", 6, 8), ("resnet20", 18, 20), ("resnet18", 16, 18),
                                            ("resnet50", 48, 50), ("mobilenet_v2", 51, 53)])
def test_unit_counts_follow_the_spec_table(arch, qat, ptq):
    model = models.create(arch, num_classes=10)
    assert (len(ompq_units(model, "qat")), len(ompq_units(model, "ptq"))) == (qat, ptq)


def test_units_join_the_downsample_to_the_last_conv_and_take_the_right_features():
    units = {u.name: u for u in ompq_units(models.create("resnet18", num_classes=10), "ptq")}
    assert units["layer2.0.conv2"].layers == ("layer2.0.conv2", "layer2.0.downsample.0")
    assert (units["layer2.0.conv2"].source, units["layer2.0.conv2"].port) == ("layer2.0", "output")
    assert (units["layer2.0.conv1"].source, units["layer2.0.conv1"].port) == ("layer2.0.conv2", "input")
    assert (units["conv1"].source, units["fc"].source) == ("relu", "fc")
    b50 = {u.name: u for u in ompq_units(models.create("resnet50", num_classes=10), "qat")}
    assert b50["layer1.0.conv2"].source == "layer1.0.conv3"
    assert b50["layer1.0.conv3"].layers == ("layer1.0.conv3", "layer1.0.downsample.0")


# ----------------------------------------------------------------------------- importance file
@pytest.fixture(scope="module")
def resnet8_importance(tmp_path_factory):
    torch.manual_seed(0)
    model = models.create("resnet8", num_classes=10).eval()
    images = torch.randn(12, 3, 16, 16)
    path = tmp_path_factory.mktemp("ompq") / "importance.pkl"
    imp = compute_ompq_importance(model, images, mode="ptq")
    write_ompq_importance(path, imp)
    return model, images, imp, path, CostModel.from_model(models.create("resnet8", num_classes=10), 16)


def _reference_features(model, images):
    """The reference's pass: the whole model in train mode (it never calls eval()), on a copy."""
    model = copy.deepcopy(model).train()
    seen = {}
    model.relu.register_forward_hook(lambda m, i, o: seen.__setitem__("stem", o.clone()))
    model.layer2[0].register_forward_hook(lambda m, i, o: seen.__setitem__("block", o.clone()))
    with torch.no_grad():
        logits = model(images)
    return seen, logits


def test_importance_uses_the_unit_features(resnet8_importance):
    model, images, imp, _, _ = resnet8_importance
    seen, logits = _reference_features(model, images)
    order = imp.units
    assert order[0] == "conv1" and order[-1] == "fc" and imp.samples == 12
    assert imp.orm[0, -1] == pytest.approx(linear_cka(seen["stem"], logits), abs=1e-9)
    assert imp.orm[0, order.index("layer2.0.conv2")] == pytest.approx(linear_cka(seen["stem"], seen["block"]),
                                                                      abs=1e-9)
    assert imp.unit_params["conv1"] == 3 * 16 * 9 and imp.unit_bn_params["conv1"] == 32


def _with_wrong_running_stats(model):
    wrong = copy.deepcopy(model)
    for bn in wrong.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.fill_(-0.3)
            bn.running_var.fill_(2.5)
            bn.num_batches_tracked.fill_(7)
    return wrong


def _buffers(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_train_mode_bn_ignores_the_running_statistics_and_leaves_them_alone(resnet8_importance):
    model, images, imp, _, _ = resnet8_importance
    wrong = _with_wrong_running_stats(model)
    before = _buffers(wrong)
    train_imp = compute_ompq_importance(wrong, images, mode="ptq", bn_mode="train")
    assert np.allclose(train_imp.gamma, imp.gamma, atol=1e-10, rtol=0)
    after = _buffers(wrong)
    assert all(torch.equal(before[k], after[k]) for k in before) and not wrong.training
    eval_right = compute_ompq_importance(model, images, mode="ptq", bn_mode="eval")
    eval_wrong = compute_ompq_importance(wrong, images, mode="ptq", bn_mode="eval")
    assert not np.allclose(eval_wrong.gamma, eval_right.gamma, atol=1e-3)
    assert not np.allclose(eval_right.gamma, imp.gamma, atol=1e-6)   # the two modes do differ


def test_eval_mode_bn_uses_the_running_statistics(resnet8_importance):
    model, images, _, _, _ = resnet8_importance
    imp = compute_ompq_importance(model, images, mode="ptq", bn_mode="eval")
    seen = {}
    h = model.relu.register_forward_hook(lambda m, i, o: seen.__setitem__("stem", o.clone()))
    with torch.no_grad():
        logits = model.eval()(images)
    h.remove()
    assert imp.orm[0, -1] == pytest.approx(linear_cka(seen["stem"], logits), abs=1e-9)
    with pytest.raises(ValueError, match="bn_mode"):
        compute_ompq_importance(model, images, bn_mode="batch")


def test_importance_file_round_trips_and_gives_the_qat_view(resnet8_importance):
    _, _, imp, path, cost = resnet8_importance
    raw = pickle.loads(path.read_bytes())
    assert set(raw) == {"unit_name", "unit_layers", "unit_params", "unit_bn_params", "orm", "gamma", "mode",
                        "samples"}
    assert "beta" not in raw and raw["mode"] == "ptq"
    back = read_ompq_importance(path, cost, "ptq")
    assert back.units == imp.units and np.allclose(back.orm, imp.orm)
    qat = read_ompq_importance(path, cost, "qat")
    assert qat.units == imp.units[1:-1] and np.allclose(qat.orm, imp.orm[1:-1, 1:-1])
    assert np.allclose(qat.gamma, imp.orm[1:-1, 1:-1].sum(1) - 1)


def _write(path, data):
    path.write_bytes(pickle.dumps(data))
    return path


def test_importance_file_is_validated(resnet8_importance, tmp_path):
    _, _, imp, path, cost = resnet8_importance
    other = CostModel.from_model(models.create("resnet20", num_classes=10), 16)
    with pytest.raises(ValueError, match="do not cover"):
        read_ompq_importance(path, other, "qat")
    bad = to_builtins(imp)
    bad["gamma"]["conv1"] += 0.5
    with pytest.raises(ValueError, match="gamma"):
        read_ompq_importance(_write(tmp_path / "g.pkl", bad), cost, "qat")
    bad = to_builtins(imp)
    bad["orm"][0][1] = 0.123
    with pytest.raises(ValueError, match="symmetric"):
        read_ompq_importance(_write(tmp_path / "s.pkl", bad), cost, "qat")
    bad = {**to_builtins(imp), "beta": 3.0}
    with pytest.raises(ValueError, match="unexpected"):
        read_ompq_importance(_write(tmp_path / "k.pkl", bad), cost, "qat")
    with pytest.raises(UntrustedPickleError):
        read_ompq_importance(_write(tmp_path / "code.pkl", np.zeros(2)), cost, "qat")
    qat_only = to_builtins(imp.without({"conv1", "fc"}))
    with pytest.raises(ValueError, match="'qat' units only"):
        read_ompq_importance(_write(tmp_path / "q.pkl", qat_only), cost, "ptq")


def test_importance_stage_writes_the_file(tmp_path):
    model = models.create("resnet8", num_classes=10)
    save_checkpoint(tmp_path / "fp32.pt", state_dict=model.state_dict(), arch="resnet8", num_classes=10,
                    kind="fp32", config={})
    from mpq.config import section_defaults

    spec = {"seed": 0, "device": "cpu",
            "dataset": section_defaults("dataset", {"name": "digits", "image_size": 16, "batch_size": 64}),
            "model": {"arch": "resnet8", "num_classes": 10},
            "ompq": section_defaults("importance.ompq", {"samples": 16})}
    out = tmp_path / "importance.pkl"
    run_stage_in_process("ompq_importance", "--spec", json.dumps(spec), "--threads", "1",
                         "--fp32", str(tmp_path / "fp32.pt"), "--out", str(out))
    cost = CostModel.from_model(model, 16)
    imp = read_ompq_importance(out, cost, "qat")
    assert imp.samples == 16 and len(imp.units) == 6


# ----------------------------------------------------------------------------------------- LP
def test_lp_coefficients_are_downstream_means():
    assert lp_coefficients([1.0, 0.5, 0.0]).tolist() == pytest.approx([0.5, 0.25, 0.0])


def _random_rows(rng, n, two_rows=False):
    params = [int(rng.integers(1, 10_000)) for _ in range(n)]
    lo, hi = 2, 6
    rows = [Row("size", tuple(params), int(sum(params) * rng.uniform(lo + 0.2, hi - 0.2)))]
    if two_rows:
        macs = [int(rng.integers(1, 10_000)) for _ in range(n)]
        rows.append(Row("bitops", tuple(macs), int(sum(macs) * rng.uniform(lo + 0.5, hi - 0.5))))
    return rows, lo, hi


def _lp_value(c, rows, lo, hi):
    res = linprog(-np.asarray(c), A_ub=[r.cost for r in rows], b_ub=[r.rhs for r in rows],
                  bounds=[(lo, hi)] * len(c), method="highs")
    return -res.fun


@pytest.mark.parametrize("seed", range(25))
def test_rounded_policy_never_exceeds_and_stays_within_one_bit_of_the_lp(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 7))
    rows, lo, hi = _random_rows(rng, n, two_rows=seed % 3 == 0)
    c = lp_coefficients(rng.uniform(0, 1, n))
    x = solve_lp(c, rows, lo, hi)
    lp = float(sum(ci * float(v) for ci, v in zip(c, x)))
    assert lp == pytest.approx(_lp_value(c, rows, lo, hi), rel=1e-7)    # the LP optimum
    bits = round_bits(x, c, rows, lo, hi)
    for row in rows:
        assert sum(k * b for k, b in zip(row.cost, bits)) <= row.rhs
    assert all(lo <= b <= hi and abs(b - float(v)) < 1 for b, v in zip(bits, x))
    feasible = [sum(ci * b for ci, b in zip(c, cand)) for cand in itertools.product(range(lo, hi + 1), repeat=n)
                if all(sum(k * b for k, b in zip(r.cost, cand)) <= r.rhs for r in rows)]
    assert max(feasible) <= lp + 1e-9                                  # brute force never beats the LP


def test_exact_knapsack_has_one_fractional_unit_and_rounding_floors_it():
    rows = [Row("size", (10, 20, 30), 10 * 4 + 20 * 3 + 30 * 2 + 7)]
    x = fractional_knapsack([3.0, 2.0, 1.0], rows[0].cost, rows[0].rhs, 2, 4)
    assert x == [Fraction(4), Fraction(3) + Fraction(7, 20), Fraction(2)]
    assert round_bits(x, [3.0, 2.0, 1.0], rows, 2, 4) == [4, 3, 2]


def test_rounding_search_keeps_the_largest_size_within_the_continuous_cost():
    rows = [Row("size", (3, 5, 4), 100)]
    x = [2.5, 3.5, 2.5]                                    # t = 7.5 + 17.5 + 10 = 35
    bits = round_bits(x, [1.0, 1.0, 1.0], rows, 2, 4)
    assert sum(k * b for k, b in zip(rows[0].cost, bits)) == 34 and bits == [2, 4, 2]   # [3, 3, 3] is 36
    tie = [Row("size", (3, 3), 100)]                         # [3, 2] and [2, 3] both cost 15
    assert round_bits([2.5, 2.5], [1.0, 2.0], tie, 2, 4) == [2, 3]      # larger sum of c * b
    assert round_bits([2.5, 2.5], [2.0, 1.0], tie, 2, 4) == [3, 2]
    assert round_bits([2.5, 2.5], [1.0, 1.0], tie, 2, 4) == [2, 3]      # then lexicographically first
    many = [2.5] * 25                                       # more than 20 fractional: round, then repair
    bits = round_bits(many, [1.0] * 25, [Row("size", (1,) * 25, 60)], 2, 4)
    assert sum(bits) <= 60 and all(2 <= b <= 3 for b in bits)


def test_infeasible_budget_is_one_line():
    with pytest.raises(ValueError, match="below the smallest reachable") as e:
        solve_lp([1.0, 1.0], [Row("size", (8 * 2**20, 8 * 2**20), 3 * 16 * 2**20)], 4, 8)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------ policies
def test_ompq_policy_respects_the_budget_and_scales_with_theta(resnet8_importance):
    _, _, imp, _, cost = resnet8_importance
    qat = imp.without({"conv1", "fc"})
    units = [qat.unit_layers[u] for u in qat.units]
    budget = {"size_mb": 0.045}
    w, a, meta = ompq_policy(qat.theta(10.0), units, cost, budget, 4, 8, act_bits=6)
    assert cost.size_bits(w) <= cost.searchable_budget(budget).total_size_bits
    assert a == [6] * len(w) and meta["fixed_bits"] == [[8, 8], [8, 8]]
    assert all(abs(b - lp) < 1 for b, lp in zip(meta["unit_bits"], meta["lp_bits"]))
    assert ompq_policy(qat.theta(10.0) * 1e-3, units, cost, budget, 4, 8)[0] == w
    bitops = {"size_mb": 0.045, "bitops": "w5a6"}
    w2, a2, _ = ompq_policy(qat.theta(10.0), units, cost, bitops, 4, 8, act_bits=6)
    assert cost.bitops(w2, a2) <= cost.uniform_bitops(5, 6) and cost.size_bits(w2) <= cost.size_bits(w)


def test_ptq_mode_searches_the_stem_and_classifier_bits(resnet8_importance):
    _, _, _, path, cost = resnet8_importance
    w, _, meta = search_ompq({"budget": {"size_mb": 0.02}, "mode": "ptq"}, cost, importance_path=path,
                              settings={"beta": 10.0})
    (stem_w, stem_a), (fc_w, fc_a) = meta["fixed_bits"]
    assert 2 <= stem_w <= 4 and 2 <= fc_w <= 4 and (stem_a, fc_a) == (8, 8)
    real = CostModel.from_model(models.create("resnet8", num_classes=10), 16, fixed_bits=meta["fixed_bits"])
    assert real.size_mib(w) <= 0.02 and set(w) <= {2, 3, 4}
    assert meta["method"] == "ompq" and meta["beta"] == 10.0 and len(meta["units"]) == 8


# ------------------------------------------------------------------------- spec test vectors
@pytest.fixture(scope="module")
def resnet18():
    model = models.create("resnet18", num_classes=1000)
    return model, CostModel.from_model(model, 224)


def test_resnet18_qat_6_7_mb_configuration(resnet18):
    model, cost = resnet18
    bits = [8, 8, 8, 8, 7, 8, 8, 8, 8, 4, 6, 8, 4, 4, 4, 4]
    w, fixed = layer_bits([list(u.layers) for u in ompq_units(model, "qat")], bits, cost)
    assert w[cost.names.index("layer3.0.downsample.0")] == 4 and fixed == [[8, 8], [8, 8]]
    assert cost.size_mib(w) == pytest.approx(6.6916, abs=5e-5)
    assert cost.bitops(w, [8] * len(w)) / 1e9 == pytest.approx(96.730, abs=5e-4)
    assert cost.bitops(w, [6] * len(w)) / 1e9 == pytest.approx(74.444, abs=5e-4)


def test_resnet18_ptq_4_0_list(resnet18):
    model, cost = resnet18
    bits = [4, 4, 4, 4, 4, 4, 4, 3, 3, 3, 3, 3, 4, 3, 2, 3, 3, 3]
    w, fixed = layer_bits([list(u.layers) for u in ompq_units(model, "ptq")], bits, cost)
    real = CostModel.from_model(model, 224, fixed_bits=fixed)
    assert fixed == [[4, 8], [3, 8]]
    assert real.size_mib(w) == pytest.approx(3.9962, abs=5e-5)
