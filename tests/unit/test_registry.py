"""One source of truth: the schema's method and model enums are the registries', the library
takes its defaults from the schema, and no stage supplies a fallback for a config key."""
import ast
from pathlib import Path

from mpq import models
from mpq.config import load_schema, section_defaults
from mpq.registry import FINETUNE_METHODS, SEARCH_METHODS, model_rule, search_method

REPO = Path(__file__).resolve().parents[2]


def _props(*path):
    node = load_schema()
    for part in path:
        node = node["additionalProperties"] if part == "*" else node["properties"][part]
    return node


def test_the_schema_enums_are_the_registries():
    assert _props("policies", "*", "search")["enum"] == list(SEARCH_METHODS)
    assert _props("finetune", "*", "method")["enum"] == list(FINETUNE_METHODS)
    assert sorted(_props("model", "arch")["enum"]) == sorted(models.list_models())
    importances = {i for m in SEARCH_METHODS.values() for i in m.importance}
    assert set(_props("policies", "*", "importance")["enum"]) == importances


def test_every_search_entry_resolves_and_the_rules_exist():
    import importlib

    for method in SEARCH_METHODS.values():
        module, function = method.entry.split(":")
        assert callable(getattr(importlib.import_module(module), function)), method.entry
    rules = (REPO / "workflow/rules/finetune.smk").read_text()
    for method in FINETUNE_METHODS.values():
        for rule in (method.rule, *method.rule_by_importance.values()):
            assert f"rule {rule}:" in rules
    assert model_rule("none", "rfquant") == "subnet" and model_rule("none", "limpq") == "finetune"
    assert model_rule("ptq", None) == "ptq"


def test_each_search_declares_its_budgets_and_the_config_keys_its_spec_carries():
    import subprocess
    import sys

    from mpq.config import validate_config

    schema_budgets = set(_props("policies", "*", "budget")["properties"])
    assert {k for m in SEARCH_METHODS.values() for k in m.budgets} == schema_budgets
    cfg = validate_config({"experiment": "e", "dataset": {"name": "digits"},
                           "model": {"arch": "resnet8", "num_classes": 10},
                           "search": {"alpha": 3.0, "greedy": {"start_bits": 6}},
                           "importance": {"ompq": {"mode": "ptq", "samples": 16}},
                           "policies": {"u": {"search": "uniform", "bits": [4, 4]}}}, load_schema())
    assert SEARCH_METHODS["uniform"].settings_for(cfg, {"search": "uniform"}) is None
    ilp = SEARCH_METHODS["ilp"].settings_for(cfg, {"search": "ilp", "solver": "cbc"})
    assert ilp == {"alpha": 3.0, "solver": "cbc", "erase_non_monotone": True}   # no RFQuant keys
    greedy = SEARCH_METHODS["greedy"].settings_for(cfg, {"search": "greedy"})
    assert greedy == section_defaults("search.greedy", {"start_bits": 6})
    ompq = SEARCH_METHODS["ompq"].settings_for(cfg, {"search": "ompq", "beta": 2.0})
    assert ompq["bits"] == [2, 4] and ompq["beta"] == 2.0 and "samples" not in ompq   # the importance rule's
    # the workflow resolves them while building the DAG: that must not load torch
    code = ("import sys; from mpq.registry import SEARCH_METHODS as M; "
            "[M[m].settings and __import__(M[m].settings.split(':')[0]) for m in M]; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_unknown_search_method_names_the_known_ones():
    try:
        search_method("anneal")
    except ValueError as e:
        assert "uniform, ilp, greedy, ompq" in str(e)
    else:
        raise AssertionError("no error")


def test_method_dependent_defaults_land_only_in_their_recipes():
    ptq = section_defaults("finetune.*", {"method": "ptq"})
    lsq = section_defaults("finetune.*", {"method": "lsq"})
    n2uq = section_defaults("finetune.*", {"method": "n2uq"})
    assert ptq["iters_w"] == 20000 and "iters_w" not in lsq
    assert n2uq["rprelu"] is True and lsq["rprelu"] is False
    assert "dampen_weight_final" not in lsq
    assert section_defaults("finetune.*", {"oscillation": "dampen"})["dampen_weight_final"] == 0.1


def _config_keys() -> set[str]:
    keys = set()

    def walk(node):
        if isinstance(node, dict):
            keys.update(node.get("properties", {}))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(load_schema())
    return keys


def test_no_stage_supplies_a_fallback_for_a_config_key():
    """A fallback in a stage (spec.get("epochs", 3)) is a default Snakemake never sees: changing
    it would rerun nothing. The specs carry every key the stages read, resolved from the schema."""
    keys = _config_keys()
    found = []
    for path in sorted((REPO / "stages").glob("*.py")) + [REPO / "mpq/stage_common.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                    and len(node.args) == 2 and isinstance(node.args[0], ast.Constant) \
                    and node.args[0].value in keys \
                    and not (isinstance(node.args[1], ast.Constant) and node.args[1].value is None):
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert found == []


def test_no_module_keeps_a_table_of_config_defaults():
    """The defaults live in workflow/schemas/config.schema.yaml only (library code asks
    mpq.config.section_defaults): no `*DEFAULTS` table in mpq/ or stages/."""
    found = []
    for path in sorted(REPO.glob("mpq/**/*.py")) + sorted((REPO / "stages").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, ast.AnnAssign) else []
            found += [f"{path.relative_to(REPO)}: {t.id}" for t in targets
                      if isinstance(t, ast.Name) and "DEFAULT" in t.id
                      and "section_defaults" not in ast.unparse(node.value)]   # read from the schema
    assert found == []
