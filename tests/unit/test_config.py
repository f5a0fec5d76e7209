"""Config validation: defaults, string coercion and one-line errors naming the key."""
from pathlib import Path

import pytest
import yaml

from mpq.config import ConfigError, check_yaml_syntax, resolve_spec, spec_missing_keys, validate_config

REPO = Path(__file__).resolve().parents[2]
SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
DEFAULT = yaml.safe_load((REPO / "config/config.yaml").read_text())


def test_default_config_is_valid_and_gets_defaults():
    cfg = validate_config(DEFAULT, SCHEMA)
    assert cfg["finetune"]["lsq"]["momentum"] == 0.9
    assert cfg["quant"]["grad_scale"] is True
    assert cfg["search"]["erase_non_monotone"] is True


def test_a_stage_spec_must_carry_every_defaulted_key_of_its_sections():
    """Stages fill in nothing: a hand-written spec is refused with the keys it leaves out (conditional
    defaults too); the sections the workflow resolves pass."""
    given = {"seed": 1, "dataset": {"name": "digits"}, "pretrain": {"weights": "w.pth"},
             "recipe": {"method": "ptq"}, "policy": {"keep": "as is"}}
    missing = spec_missing_keys(given)
    assert "dataset.workers" in missing and "pretrain.epochs" in missing and "recipe.epochs" in missing
    assert not any(k.startswith(("policy.", "seed")) for k in missing)
    cfg = validate_config({**DEFAULT, "dataset": {"name": "digits"}, "pretrain": {"weights": "w.pth"}}, SCHEMA)
    assert cfg["pretrain"]["epochs"] == 0 and validate_config(DEFAULT, SCHEMA)["pretrain"]["epochs"] == 20  # as written
    resolved = {**given, "dataset": cfg["dataset"], "pretrain": cfg["pretrain"], "recipe": cfg["finetune"]["lsq"]}
    assert spec_missing_keys(resolved) == []
    filled = resolve_spec(given)
    assert filled["dataset"] == cfg["dataset"] and filled["pretrain"] == cfg["pretrain"]
    assert filled["policy"] == {"keep": "as is"} and given["dataset"] == {"name": "digits"}   # not touched
    assert spec_missing_keys(filled) == []


def test_strings_from_the_command_line_are_coerced():
    cfg = validate_config({**DEFAULT, "seed": "3", "pretrain": {"epochs": "2", "lr": "0.05", "nesterov": "false"}}, SCHEMA)
    assert cfg["seed"] == 3 and cfg["pretrain"]["epochs"] == 2 and cfg["pretrain"]["lr"] == 0.05
    assert cfg["pretrain"]["nesterov"] is False


@pytest.mark.parametrize("patch, message", [
    ({"modle": {}}, "unknown key modle"),
    ({"pretrain": {"epochs": "x"}}, "pretrain.epochs: 'x' is not of type 'integer'"),
    ({"model": {"arch": "vgg", "num_classes": 10}}, "model.arch: 'vgg' is not one of"),
    ({"policies": {"p": {"search": "ilp", "importance": "limpq", "budget": {"bitops": "w9a3"}}}},
     "policies.p.budget.bitops"),
    ({"policies": {"p": {"search": "ilp", "importance": "limpq"}}}, "policies.p: search 'ilp' needs a budget"),
    ({"policies": {"p": {"search": "uniform"}}}, "policies.p: search 'uniform' needs bits"),
    ({"policies": {"p": {"search": "uniform", "bits": [4, 4], "finetune": "nope"}}},
     "policies.p.finetune: recipe 'nope' is not defined"),
    ({"policies": {"p": {"search": "ilp", "importance": "limpq", "budget": {"bitops": "w3a3", "bitops_g": 1.0}}}},
     "policies.p.budget: bitops and bitops_g exclude each other; keep one of them"),
    ({"policies": {"p": {"search": "uniform", "bits": [4, 4], "budget": {"bitops": "w3a3"}}}},
     "policies.p: search 'uniform' ignores budget (its bits are bits: [w, a]); remove budget"),
])
def test_errors_are_one_line_naming_the_key(patch, message):
    with pytest.raises(ConfigError) as err:
        validate_config({**DEFAULT, **patch}, SCHEMA)
    text = str(err.value)
    assert "\n" not in text and text.startswith("config error: ")
    assert message in text


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("experiment: x\npolicies:\n  u: {search: uniform, bits: [4, 4]\n  v: {search: uniform}\n")
    with pytest.raises(ConfigError) as err:
        check_yaml_syntax(path)
    assert str(err.value) == (f"config error: {path}: YAML syntax error at line 4, column 3: expected ',' or '}}', "
                              f"but got '<scalar>' (while parsing a flow mapping that starts at line 3, column 6); "
                              f"fix that line")
    check_yaml_syntax(REPO / "config/config.yaml")
    check_yaml_syntax(tmp_path / "absent.yaml")   # left to Snakemake, which names it
