"""bench/paper_accounting.py: our accounting of the published policies, and the README table."""
import importlib.util
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def accounting():
    spec = importlib.util.spec_from_file_location("paper_accounting", REPO / "bench" / "paper_accounting.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def table(accounting):
    return accounting.rows()


def _row(table, recipe, policy_prefix):
    found = [r for r in table if r.recipe == recipe and r.policy.startswith(policy_prefix)]
    assert len(found) == 1, (recipe, policy_prefix, [r.policy for r in table])
    return found[0]


def test_readme_table_is_the_generated_one(accounting, table):
    """config/papers/README.md carries exactly what the script prints (re-run it after changes)."""
    text = (REPO / "config" / "papers" / "README.md").read_text()
    match = re.search(r"<!-- accounting:begin -->\n(.*?)<!-- accounting:end -->", text, flags=re.S)
    assert match, "accounting markers missing in config/papers/README.md"
    assert match.group(1) == accounting.markdown(table)


def test_limpq_resnet50_golden_policy(accounting, table):
    """docs/methods/limpq.md: the exact-accounting ILP optimum and the README policy."""
    exact = _row(table, "limpq_resnet50", "limpq-w3a4-cr12.2 (exact")
    assert round(exact.bitops_g, 4) == 55.3006
    assert round(exact.size_mib, 4) == 7.9719
    assert round(exact.cr, 4) == 12.2037
    readme_w, readme_a = accounting.limpq_r50_readme()
    diff = [i for i in range(52) if (readme_w[i], readme_a[i]) != (accounting.LIMPQ_R50_EXACT_W[i],
                                                                   accounting.LIMPQ_R50_EXACT_A[i])]
    assert diff == [5, 10, 16, 42, 45]
    quirk = accounting.cost_model("resnet50", float_hw_quirk=True)
    assert round(quirk.bitops(readme_w, readme_a) / 1e9, 4) == 56.0346          # the published 56.0 G
    assert round(quirk.compression_ratio(readme_w), 4) == 12.2029
    readme = _row(table, "limpq_resnet50", "limpq-w3a4-cr12.2 (README")
    assert readme.bitops_g > 55.3134 > exact.bitops_g                         # over the exact target


def test_ompq_resnet18_lists(accounting, table):
    """docs/methods/ompq.md: 6.6916 MiB, 96.730 G (a8) and 74.444 G (a6); the PTQ 4.0 list 3.9962 MiB."""
    a8 = _row(table, "ompq_resnet18_qat", "ompq-6.7mb-a8")
    a6 = _row(table, "ompq_resnet18_qat", "ompq-6.7mb-a6")
    assert round(a8.size_mib, 4) == round(a6.size_mib, 4) == 6.6916
    assert round(a8.bitops_g, 3) == 96.730 and round(a6.bitops_g, 3) == 74.444
    assert abs(a8.bitops_g - 97) < 0.5 and abs(a6.bitops_g - 75) < 0.6 and round(a8.size_mib, 1) == 6.7
    ptq = _row(table, "(cross-check) OMPQ ResNet-18 PTQ", "4.0 MB")
    assert round(ptq.size_mib, 4) == 3.9962
    assert accounting.ompq_r18_units_to_layers(list(range(16))) == [0, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9, 9, 10,
                                                                    11, 12, 13, 13, 14, 15]


def test_uniform_points_match_the_accounting_spec(table):
    """docs/methods/accounting.md uniform totals."""
    assert round(_row(table, "limpq_resnet18", "W4A4").bitops_g, 4) == 34.7144
    assert round(_row(table, "limpq_resnet50", "W4A4").bitops_g, 4) == 71.1899
    assert round(_row(table, "rfquant_mobilenetv2", "uniform W4A4").bitops_g, 3) == 5.394
    assert round(_row(table, "oscillations_mobilenetv2", "w3a3").bitops_g, 4) == 3.3735
    assert round([r for r in table if r.policy == "n2uq-w2a2"][0].bitops_g, 4) == 14.3679
    assert round([r for r in table if r.policy == "n2uq-w3a3"][0].bitops_g, 4) == 22.8456
    assert round(_row(table, "limpq_resnet18", "W4A4").size_mib, 4) == 5.8176
