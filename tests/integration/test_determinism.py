"""Same config and seed, same outputs: the search stage writes byte-identical policies (wall times go to a
separate policy.timing.json)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mpq import models
from mpq.config import resolve_spec
from mpq.cost import CostModel
from mpq.importance_file import Importance, write_importance

REPO = Path(__file__).resolve().parents[2]
QUANT = {"candidates": [6, 5, 4, 3, 2], "fixed_layers": {"first": [8, 8], "last": [8, 8]}}

pytestmark = pytest.mark.integration


def test_search_twice_gives_the_same_policy_file(tmp_path):
    cost = CostModel.from_model(models.create("resnet20", num_classes=10), 32)
    gen = __import__("random").Random(5)
    ind = {n: {b: gen.uniform(0.01, 0.02) * (7 - b) for b in QUANT["candidates"]} for n in cost.names}
    act = {n: {b: gen.uniform(0.05, 0.1) * (7 - b) for b in QUANT["candidates"]} for n in cost.names}
    write_importance(tmp_path / "imp.pkl", Importance(cost.names, QUANT["candidates"], ind, act))
    spec = {"policy_name": "p", "policy": {"search": "ilp", "importance": "limpq",
                                           "budget": {"bitops": "w3a4", "size_mb": 0.1}},
            "model": {"arch": "resnet20", "num_classes": 10}, "image_size": 32, "quant": QUANT,
            "search": {"alpha": 2.0, "solver": "auto"}}
    texts = []
    for i in range(2):
        out = tmp_path / f"policy{i}.yaml"
        proc = subprocess.run([sys.executable, str(REPO / "stages/search.py"), "--spec", json.dumps(resolve_spec(spec)),
                               "--importance", str(tmp_path / "imp.pkl"), "--out", str(out)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        texts.append(out.read_text())
        timing = json.loads((tmp_path / f"policy{i}.timing.json").read_text())
        assert set(timing) == {"search"} and timing["search"] >= 0
    assert texts[0] == texts[1]
    assert "w_bits" in texts[0] and "seconds" not in texts[0]
