"""Budget sweeps: a list or a range in a policy's budget expands into one ordinary policy per point."""
from pathlib import Path

import pytest
import torch
import yaml

from mpq import models
from mpq.config import ConfigError, validate_config
from mpq.cost import CostModel
from mpq.sweeps import expand_sweeps, sweep_points

REPO = Path(__file__).resolve().parents[2]
SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
DEFAULT = yaml.safe_load((REPO / "config/config.yaml").read_text())


def with_policies(**policies):
    return validate_config({**DEFAULT, "policies": policies}, SCHEMA)["policies"]


def test_a_list_becomes_one_policy_per_value_named_by_it():
    pols = with_policies(sz={"search": "ilp", "importance": "limpq", "budget": {"size_mb": [0.03, 0.022]},
                             "finetune": "lsq"})
    assert list(pols) == ["sz-0.03", "sz-0.022"]
    assert pols["sz-0.022"] == {"search": "ilp", "importance": "limpq", "budget": {"size_mb": 0.022},
                                "finetune": "lsq", "front": "sz"}


def test_a_numeric_range_is_evenly_spaced_and_rounded_to_its_names():
    points = sweep_points("size_mb", {"sweep": [0.02, 0.05], "points": 4})
    assert points == [("0.02", 0.02), ("0.03", 0.03), ("0.04", 0.04), ("0.05", 0.05)]
    thirds = sweep_points("bitops_g", {"sweep": [0.1, 0.2], "points": 4})
    assert [name for name, _ in thirds] == ["0.1", "0.1333", "0.1667", "0.2"]
    assert all(float(name) == value for name, value in thirds)


def test_a_wxay_range_is_fractions_of_the_way_and_the_cost_model_resolves_them():
    pols = with_policies(rf={"search": "greedy", "importance": "rfquant",
                             "budget": {"bitops": {"sweep": ["w2a3", "w6a6"], "points": 5}}})
    assert list(pols) == ["rf-f0", "rf-f0.25", "rf-f0.5", "rf-f0.75", "rf-f1"]
    assert pols["rf-f0.25"]["budget"] == {"bitops": {"between": ["w2a3", "w6a6"], "at": 0.25}}
    cost = CostModel.from_model(models.create("resnet8", num_classes=10), 16)
    b = {t: cost.searchable_budget(pols[f"rf-f{t}"]["budget"]).bitops for t in ("0", "0.25", "1")}
    assert b["0"] == cost.searchable_budget({"bitops": "w2a3"}).bitops
    assert b["1"] == cost.searchable_budget({"bitops": "w6a6"}).bitops
    assert b["0.25"] == int(0.75 * b["0"] + 0.25 * b["1"])


def test_growing_a_sweep_keeps_the_old_points_unchanged():
    """Specs hold a point's own budget only: a value added to a list, or a range whose grid still
    holds the old points, leaves those points' policies (and so their jobs) as they were."""
    few = {"search": "greedy", "importance": "rfquant", "budget": {"bitops": {"sweep": ["w2a3", "w6a6"], "points": 3}}}
    many = {**few, "budget": {"bitops": {"sweep": ["w2a3", "w6a6"], "points": 5}}}
    before, after = expand_sweeps({"rf": few}), expand_sweeps({"rf": many})
    assert set(before) < set(after) and all(after[name] == before[name] for name in before)
    listed = expand_sweeps({"s": {"search": "ilp", "budget": {"size_mb": [0.02, 0.03]}}})
    grown = expand_sweeps({"s": {"search": "ilp", "budget": {"size_mb": [0.02, 0.025, 0.03]}}})
    assert all(grown[name] == listed[name] for name in listed)


def test_validating_an_expanded_config_again_changes_nothing():
    cfg = validate_config({**DEFAULT, "policies": {"rf": {"search": "greedy", "importance": "rfquant",
                                                           "budget": {"bitops": ["w3a3", "w4a4"]}}}}, SCHEMA)
    assert validate_config(cfg, SCHEMA) == cfg


@pytest.mark.parametrize("budget, message", [
    ({"bitops": ["w3a3"], "size_mb": [0.02, 0.03]}, "may sweep one key"),
    ({"size_mb": {"sweep": [0.02, 0.02], "points": 3}}, "to itself"),
    ({"size_mb": {"sweep": [0.02, 0.0201], "points": 50}}, "repeated values"),
    ({"size_mb": {"sweep": [0.02, 0.05]}}, "size_mb"),
    ({"bitops": {"sweep": ["w2a3", "w9a9"], "points": 3}}, "bitops"),
])
def test_a_malformed_sweep_is_one_config_error(budget, message):
    with pytest.raises(ConfigError, match=message):
        with_policies(s={"search": "ilp", "importance": "limpq", "budget": budget})


def test_a_point_that_is_also_a_policy_name_is_refused():
    with pytest.raises(ConfigError, match="also a policy's name"):
        with_policies(**{"s": {"search": "ilp", "importance": "limpq", "budget": {"size_mb": [0.02]}},
                         "s-0.02": {"search": "uniform", "bits": [4, 4]}})
