"""Importance files: restricted unpickling, validation and atomic writing (limpq.md section 4)."""
import math
import os
import pickle
import pickletools
from pathlib import Path

import pytest

from mpq.importance_file import (
    Importance,
    UntrustedPickleError,
    load_untrusted_pickle,
    read_importance,
    write_importance,
)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
REFERENCE = SHARED_DATA / "limpq-resnet50-indicators.pkl"
CANDS = [6, 5, 4, 3, 2]


def _importance(names=("a.conv", "b.conv", "fc0"), cands=CANDS):
    weight = {n: {b: 0.01 * (i + 1) * (8 - b) for b in cands} for i, n in enumerate(names)}
    act = {n: {b: 0.03 * (i + 1) * (8 - b) for b in cands} for i, n in enumerate(names)}
    return Importance(list(names), list(cands), weight, act)


def _raw(names=("a.conv", "b.conv"), prefix=""):
    table = lambda s: {prefix + n: {str(b): s * (8 - b) for b in CANDS} for n in names}  # noqa: E731
    return {"weight": table(0.01), "act": table(0.03), "layer_name": [prefix + n for n in names]}


def _dump(path, obj):
    path.write_bytes(pickle.dumps(obj, protocol=4))
    return path


# ----------------------------------------------------------------------------- round trip
def test_round_trip_keeps_names_order_and_values(tmp_path):
    imp = _importance()
    path = tmp_path / "importance.pkl"
    write_importance(path, imp)
    assert read_importance(path) == imp
    assert read_importance(path, expected_names=["fc0", "a.conv", "b.conv"]).names == ["fc0", "a.conv", "b.conv"]
    assert [p.name for p in tmp_path.iterdir()] == ["importance.pkl"]  # no temp file left behind


def test_written_file_is_plain_builtins_in_canonical_order(tmp_path):
    imp = _importance(cands=[2, 4, 3])  # candidates given out of order on purpose
    path = tmp_path / "imp.pkl"
    write_importance(path, imp)
    data = path.read_bytes()
    assert data[:2] == b"\x80\x04"  # protocol 4
    assert not {op.name for op, _, _ in pickletools.genops(data)} & {"GLOBAL", "STACK_GLOBAL", "REDUCE"}
    raw = pickle.loads(data)
    assert list(raw) == ["weight", "act", "layer_name"]
    assert raw["layer_name"] == list(imp.names)
    assert list(raw["weight"]) == list(imp.names)
    assert list(raw["act"]["b.conv"]) == ["4", "3", "2"]


def test_write_strips_ddp_prefix(tmp_path):
    imp = _importance(names=("module.a.conv", "b.conv"))
    write_importance(tmp_path / "imp.pkl", imp)
    raw = pickle.loads((tmp_path / "imp.pkl").read_bytes())
    assert raw["layer_name"] == ["a.conv", "b.conv"] and list(raw["act"]) == ["a.conv", "b.conv"]


def test_write_replaces_atomically_and_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "imp.pkl"
    write_importance(path, _importance())
    before = path.read_bytes()
    bad = _importance()
    bad.weight["a.conv"][4] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        write_importance(path, bad)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["imp.pkl"]


# ------------------------------------------------------------------------ reference file
@pytest.mark.skipif(not REFERENCE.is_file(), reason="../shared/data is absent")
def test_reads_reference_file():
    imp = read_importance(REFERENCE)
    assert len(imp.names) == 52
    assert imp.candidates == CANDS
    assert imp.names[:4] == ["layer1.0.conv1", "layer1.0.conv2", "layer1.0.conv3", "layer1.0.downsample.0"]
    assert not any(n.startswith("module.") for n in imp.names)
    w = [imp.weight["layer1.0.conv1"][b] for b in CANDS]
    a = [imp.act["layer1.0.conv1"][b] for b in CANDS]
    assert w == pytest.approx([0.0224, 0.0259, 0.0437, 0.0655, 0.1091], abs=1e-4)
    assert a == pytest.approx([0.0963, 0.1373, 0.1973, 0.2888, 0.4414], abs=1e-4)


@pytest.mark.skipif(not REFERENCE.is_file(), reason="../shared/data is absent")
def test_reference_file_subset_of_candidates_and_expected_order():
    names = read_importance(REFERENCE).names
    imp = read_importance(REFERENCE, expected_names=names[::-1], candidates=[2, 4])
    assert imp.names == names[::-1]
    assert imp.candidates == [4, 2]
    assert set(imp.weight[names[0]]) == {4, 2}


def test_strips_ddp_prefix(tmp_path):
    imp = read_importance(_dump(tmp_path / "p.pkl", _raw(prefix="module.")))
    assert imp.names == ["a.conv", "b.conv"]
    assert set(imp.weight) == {"a.conv", "b.conv"}


# ------------------------------------------------------------------------- untrusted data
class _SystemPayload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class _ExecPayload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (exec, (f"open({str(self.target)!r}, 'w').close()",))


@pytest.mark.parametrize("payload, global_name", [(_SystemPayload, "system"), (_ExecPayload, "builtins.exec")])
def test_malicious_pickle_is_refused_without_running(tmp_path, payload, global_name):
    target = tmp_path / "pwned"
    path = _dump(tmp_path / "evil.pkl", {"weight": payload(target), "act": {}, "layer_name": []})
    # Sanity check that the payload really works when loaded with plain pickle.
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(payload(probe)))
    assert probe.exists()

    with pytest.raises(UntrustedPickleError) as err:
        read_importance(path)
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message and global_name in message
    assert "only dicts, lists, strings and numbers" in message
    assert not target.exists()


def test_refuses_any_class_even_harmless(tmp_path):
    from collections import OrderedDict

    path = _dump(tmp_path / "od.pkl", OrderedDict(a=1))
    with pytest.raises(UntrustedPickleError, match="collections.OrderedDict"):
        load_untrusted_pickle(path)


def test_truncated_file_is_a_clear_error(tmp_path):
    good = pickle.dumps(_raw(), protocol=4)
    path = tmp_path / "cut.pkl"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt") as err:
        read_importance(path)
    assert str(path) in str(err.value)
    assert not isinstance(err.value, UntrustedPickleError)


# ----------------------------------------------------------------------------- validation
def test_missing_and_unexpected_names_are_listed(tmp_path):
    path = _dump(tmp_path / "p.pkl", _raw(names=["a", "b", "x1", "x2", "x3", "x4"]))
    with pytest.raises(ValueError) as err:
        read_importance(path, expected_names=["a", "b", "c"])
    msg = str(err.value)
    assert str(path) in msg and "'c'" in msg
    assert "'x1', 'x2', 'x3' (+1 more)" in msg
    assert "x4" not in msg


def test_weight_and_act_must_cover_layer_names(tmp_path):
    raw = _raw()
    del raw["act"]["b.conv"]
    with pytest.raises(ValueError, match="'act' entries disagree.*'b.conv'"):
        read_importance(_dump(tmp_path / "p.pkl", raw))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0.0, -0.5, "0.1", None])
def test_values_must_be_finite_positive_numbers(tmp_path, bad):
    raw = _raw()
    raw["weight"]["b.conv"]["4"] = bad
    with pytest.raises(ValueError, match=r"'weight'\['b.conv'\]\['4'\]"):
        read_importance(_dump(tmp_path / "p.pkl", raw))


def test_every_layer_needs_every_candidate(tmp_path):
    raw = _raw()
    del raw["act"]["a.conv"]["2"]
    path = _dump(tmp_path / "p.pkl", raw)
    with pytest.raises(ValueError, match=r"'act'\['a.conv'\] has no step for bits \[2\]"):
        read_importance(path, candidates=CANDS)
    with pytest.raises(ValueError, match="same candidates"):
        read_importance(path)
    assert read_importance(path, candidates=[6, 3]).candidates == [6, 3]


def test_rejects_wrong_top_level(tmp_path):
    with pytest.raises(ValueError, match="expected exactly"):
        read_importance(_dump(tmp_path / "p.pkl", {**_raw(), "model": "resnet50"}))
    with pytest.raises(ValueError, match="top level is list"):
        read_importance(_dump(tmp_path / "q.pkl", [1, 2]))


def test_duplicate_after_prefix_strip(tmp_path):
    raw = _raw()
    raw["layer_name"].append("module.a.conv")
    with pytest.raises(ValueError, match="repeats 'a.conv'"):
        read_importance(_dump(tmp_path / "p.pkl", raw))


def test_values_are_floats(tmp_path):
    raw = _raw()
    raw["weight"]["a.conv"]["3"] = 1  # an int step is accepted and becomes a float
    imp = read_importance(_dump(tmp_path / "p.pkl", raw))
    assert isinstance(imp.weight["a.conv"][3], float) and math.isclose(imp.weight["a.conv"][3], 1.0)
