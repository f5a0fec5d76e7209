"""The README's snippets work as written: its "Adding a policy" block on the default config, and the
`mpq cost` line with the number it prints."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mpq.config import validate_config
from mpq.preflight import preflight

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())

pytestmark = pytest.mark.integration


def section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_adding_a_policy_works_on_the_default_config_as_written():
    block = re.search(r"```yaml\n(.*?)```", section("Adding a policy"), re.S).group(1)
    added = yaml.safe_load(block)["policies"]
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["policies"].update(added)
    preflight(validate_config(config, SCHEMA))   # every recipe defined, every budget reachable


def test_recipes_the_readme_names_are_in_recipes_yaml():
    recipes = yaml.safe_load((REPO / "config/recipes.yaml").read_text())["finetune"]
    for name in re.findall(r"`(lsq-\w+|n2uq)`", section("Adding a policy")):
        assert name in recipes, name


def test_mpq_cost_prints_what_the_readme_says():
    line = next(ln for ln in section("Command-line tool and export").splitlines() if ln.startswith("mpq cost --arch"))
    command, expected = line.split("#")
    expected = expected.strip().split()[0]   # "34.7144"
    proc = subprocess.run([sys.executable, "-m", "mpq.cli", *command.split()[1:]], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert expected in proc.stdout, proc.stdout
