"""config/README.md's key tables are the schema's: generated from its types, defaults (conditional
ones too) and descriptions, and checked by `python -m mpq.config_docs`."""
import copy
import subprocess
import sys
from pathlib import Path

import pytest

from mpq.config import load_schema
from mpq.config_docs import BLOCK, README, default_of, rows, stale_sections, undocumented_keys

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def marked_sections() -> list[str]:
    return [m.group("section") for m in BLOCK.finditer(README.read_text())]


def test_every_config_section_has_a_table_and_every_key_a_meaning():
    schema = load_schema()
    sections = marked_sections()
    objects = [k for k, v in schema["properties"].items() if v.get("type") == "object"]
    expected = {"top", "dataset", "model", "pretrain", "quant", "search", "policies.*", "finetune.*",
                *(f"importance.{k}" for k in schema["properties"]["importance"]["properties"])}
    assert set(sections) == expected and len(sections) == len(expected)
    assert set(objects) - {s.split(".")[0] for s in sections} == {"resources"}   # prose: rule names
    assert undocumented_keys(schema, sections) == []


def test_readme_tables_equal_the_schema_and_a_changed_default_shows():
    schema = load_schema()
    assert stale_sections(README.read_text(), schema) == []
    changed = copy.deepcopy(schema)
    changed["properties"]["importance"]["properties"]["rfquant"]["properties"]["grad_clip"]["default"] = 2.0
    assert stale_sections(README.read_text(), changed) == ["importance.rfquant"]
    row = next(r for r in rows(changed, "importance.rfquant") if r[0] == "`grad_clip`")
    assert row[2] == "2.0"


def test_conditional_defaults_read_as_their_conditions():
    schema = load_schema()
    recipe = {r[0]: r[2] for r in rows(schema, "finetune.*")}
    assert recipe["`rprelu`"] == "true if `method` n2uq, false otherwise"
    assert recipe["`ema_momentum`"] == "0.001 if `oscillation` dampen or freeze"
    assert recipe["`calib_images`"] == "1024 if `method` ptq"
    assert {r[0]: r[2] for r in rows(schema, "pretrain")}["`epochs`"] == "0 if `weights` given, 30 otherwise"
    assert default_of("name", {}, {"required": ["name"]}) == "required"


def test_the_command_checks_and_rewrites_a_stale_copy(tmp_path):
    stale = tmp_path / "README.md"
    text = README.read_text()
    stale.write_text(text.replace("| `seed` | int | 0 |", "| `seed` | int | 7 |"))
    cmd = [sys.executable, "-m", "mpq.config_docs", "--readme", str(stale)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1 and "out of date with the schema: top;" in proc.stderr, proc.stderr
    assert subprocess.run([*cmd, "--write"], cwd=REPO, capture_output=True, text=True).returncode == 0
    assert stale.read_text() == text
    assert subprocess.run([sys.executable, "-m", "mpq.config_docs"], cwd=REPO).returncode == 0
