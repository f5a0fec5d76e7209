"""policy.yaml round trips, LIMPQ list export/import and validation against a model."""
import pytest
import yaml

from mpq import models
from mpq.cost import CostModel
from mpq.policy import Policy, PolicyError


@pytest.fixture(scope="module")
def cost():
    return CostModel.from_model(models.create("resnet8", num_classes=10), 16)


def make_policy(cost, w=None, a=None):
    n = len(cost.names)
    return Policy("resnet8", 10, 16, cost.names, w or [4] * n, a or [3] * n,
                  meta={"name": "p", "search": {"method": "ilp", "objective": 1.5}})


def test_yaml_round_trip_keeps_everything(tmp_path, cost):
    pol = make_policy(cost, [6, 5, 4, 3, 2, 2], [2, 3, 4, 5, 6, 6])
    pol.save(tmp_path / "p.yaml", cost)
    doc = yaml.safe_load((tmp_path / "p.yaml").read_text())
    assert [r["name"] for r in doc["layers"]] == cost.names
    assert [r["macs"] for r in doc["layers"]] == cost.macs
    assert doc["fixed"][0]["name"] == "conv1" and doc["fixed"][1]["name"] == "fc"
    assert doc["achieved"]["bitops_g"] == pytest.approx(cost.bitops(pol.w_bits, pol.a_bits) / 1e9, abs=1e-6)
    back = Policy.load(tmp_path / "p.yaml")
    assert (back.names, back.w_bits, back.a_bits) == (pol.names, pol.w_bits, pol.a_bits)
    assert back.fixed_bits == ((8, 8), (8, 8)) and back.meta["search"]["objective"] == 1.5


def test_limpq_lists_round_trip(cost):
    pol = make_policy(cost, [6, 5, 4, 3, 2, 2], [2, 3, 4, 5, 6, 6])
    lists = pol.to_limpq_lists()
    assert lists == {"weight_bits": [6, 5, 4, 3, 2, 2], "act_bits": [2, 3, 4, 5, 6, 6]}
    back = Policy.from_limpq_lists(lists, arch="resnet8", num_classes=10, image_size=16, names=cost.names)
    assert back.w_bits == pol.w_bits and back.a_bits == pol.a_bits
    with pytest.raises(PolicyError, match="6 searchable layers"):
        Policy.from_limpq_lists({"weight_bits": [4], "act_bits": [4]}, arch="resnet8", num_classes=10,
                                image_size=16, names=cost.names)


def test_checks_against_model_and_candidates(cost):
    pol = make_policy(cost)
    pol.check_model(cost.names)
    with pytest.raises(PolicyError, match="do not match"):
        pol.check_model(cost.names[::-1])
    bad = make_policy(cost, [7] + [4] * 5)
    with pytest.raises(PolicyError, match="W7A3 outside the candidates"):
        bad.check_candidates([6, 5, 4, 3, 2])


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(PolicyError, match="not found"):
        Policy.load(tmp_path / "missing.yaml")
    (tmp_path / "x.yaml").write_text("format: something-else\n")
    with pytest.raises(PolicyError, match="not a policy file"):
        Policy.load(tmp_path / "x.yaml")
    (tmp_path / "y.yaml").write_text("format: mpq-policy/1\nmodel: {arch: resnet8}\n")
    with pytest.raises(PolicyError, match="malformed"):
        Policy.load(tmp_path / "y.yaml")
