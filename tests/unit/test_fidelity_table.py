"""bench/fidelity_table.py: the RESULTS table and the claim deltas from a results folder."""
import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("fidelity_table", REPO / "bench" / "fidelity_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _metrics(top1, start=None):
    return {"top1": top1, "start_top1": start, "bitops_g": 0.39, "size_mb": 0.1, "avg_w_bits": 3.0,
            "avg_a_bits": 3.0}


def test_table_and_claims_from_metrics_and_benchmarks(tmp_path):
    res = tmp_path / "results"
    (res / "pretrain").mkdir(parents=True)
    (res / "pretrain" / "metrics.json").write_text(json.dumps({"top1": 88.0, "bitops_g": 41.5, "size_mb": 1.02}))
    for name, m in {"uniform-w3a3": _metrics(84.0, 79.0), "limpq-w3a3": _metrics(82.5, 72.0)}.items():
        (res / "policies" / name).mkdir(parents=True)
        (res / "policies" / name / "metrics.json").write_text(json.dumps(m))
    (res / "benchmarks" / "finetune").mkdir(parents=True)
    (res / "benchmarks" / "finetune" / "uniform-w3a3.tsv").write_text("s\th:m:s\n316.4\t0:05:16\n")
    policies = {"uniform-w3a3": {"search": "uniform", "finetune": "lsq"},
                "limpq-w3a3": {"search": "ilp", "importance": "limpq", "finetune": "lsq"},
                "rfquant-w3a3": {"search": "greedy", "importance": "rfquant", "finetune": "none"}}
    fidelity = _module()
    table = fidelity.table(res, policies).splitlines()
    assert table[2].startswith("| fp32 | | | 41.5000 | 1.0200 |")
    assert "| uniform-w3a3 | uniform | lsq | 0.3900 | 0.1000 | 3.00/3.00 | 79.00 | 84.00 | -4.00 | | 316 | |" \
        in [line.replace("|  |", "| |") for line in table]
    assert "| rfquant-w3a3 | greedy/rfquant | none | not finished |" in table[-1]
    claims = fidelity.claims(res, policies)
    assert "C1 limpq-w3a3 vs uniform-w3a3: 82.50 vs 84.00: -1.50" in claims
    assert "rfquant-w3a3 vs uniform-w3a3: not measured" in claims
