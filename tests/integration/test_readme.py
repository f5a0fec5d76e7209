"""The README's and config/README.md's snippets and commands work as written: the "Adding a policy"
block on the default config, the `mpq cost` line with the number it prints, and every shell command
the two files show (a test checks that each one is run by a named test)."""
import os
import re
import shutil
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


# ------------------------------------------------------------------ every command the docs show
DOCS = {"README.md": README, "config/README.md": (REPO / "config/README.md").read_text()}
COMMAND = re.compile(r"^(make|\.venv/bin/snakemake|snakemake|mpq|python|conda|export|pip)\s+\S")
# Each command the docs show, by its start, and the test that runs it (here unless named otherwise).
RUN_BY = {
    "make run": "test_make_targets_resolve", "make test": "test_make_targets_resolve",
    "make setup": "test_make_targets_resolve",
    "conda env create -f environment.yml": "test_environment_yml_installs_what_the_package_needs",
    ".venv/bin/snakemake --cores 2 --replace-workflow-config --configfile config/recipes.yaml":
        "test_workflow_commands_plan_on_a_clean_directory",
    "snakemake --profile profiles/gpu": "test_workflow_commands_plan_on_a_clean_directory",
    "export SNAKEMAKE_OUTPUT_CACHE=": "test_workflow_commands_plan_on_a_clean_directory",
    "snakemake --profile profiles/slurm": "test_workflow_commands_plan_on_a_clean_directory",
    "snakemake --cores 2 --replace-workflow-config --configfile config/cifar10-cpu.yaml":
        "test_workflow_commands_plan_on_a_clean_directory",
    "snakemake --report report.html": "test_html_report_after_a_run",
    "python stages/search.py --help": "test_stage_help",
    "snakemake --unlock": "test_recovering_commands_on_a_finished_run",
    "snakemake --rerun-incomplete": "test_recovering_commands_on_a_finished_run",
    "snakemake --touch": "test_recovering_commands_on_a_finished_run",
    "snakemake -n --touch": "test_recovering_commands_on_a_finished_run",
    "python -m torch.distributed.run --standalone --nproc_per_node=4":
        "test_configs.py::test_config_dry_runs",   # the ImageNet config plans its jobs under it
    "mpq ": "test_the_command_line_block_runs_as_written",
    "snakemake --configfile extra.yaml": "test_config_overrides_merge_as_config_readme_says",
    "pip install -e": "test_pip_extras_the_docs_name_exist",
    "snakemake --lint": "test_workflow.py::test_lint_finds_only_kinds_config_readme_explains",
    "python -m mpq.config_docs": "test_config_docs.py::test_the_command_checks_and_rewrites_a_stale_copy",
}


def doc_commands() -> list[tuple[str, str]]:
    """(file, command) for every shell line in a code block and every inline code span that is a command."""
    found = []
    for name, text in DOCS.items():
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
            found += [(name, ln.split("  #")[0].strip()) for ln in block.splitlines() if COMMAND.match(ln.strip())]
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        spans = (" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose))   # a span may wrap
        found += [(name, span) for span in spans if COMMAND.match(span)]
    return found


def test_every_command_the_docs_show_is_run_by_a_test():
    tests = "\n".join(p.read_text() for p in (REPO / "tests/integration").glob("test_*.py"))
    commands = doc_commands()
    assert len(commands) >= 20, commands
    for file, command in commands:
        owner = next((test for start, test in RUN_BY.items() if command.startswith(start)), None)
        assert owner, f"{file}: `{command}` is run by no test; add one and name it in RUN_BY"
        assert f"def {owner.split('::')[-1]}(" in tests, owner


def run(cmd, cwd, env=None, timeout=300):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_make_targets_resolve():
    """`make -n` for the README's three targets (prints, runs nothing): each resolves, `run` calls
    Snakemake on the default config and `test` calls pytest, with this venv."""
    venv = Path(sys.executable).parent.parent
    proc = run(["make", "-n", "setup", "run", "test", f"VENV={venv}"], REPO)
    if proc.returncode != 0 and "No such file" in proc.stderr and "make" in proc.stderr:
        pytest.skip("make is not installed")
    assert proc.returncode == 0, proc.stderr
    assert f"{venv}/bin/snakemake --cores 2" in proc.stdout and f"{venv}/bin/python -m pytest -q" in proc.stdout


def test_environment_yml_installs_what_the_package_needs():
    """The conda file names every runtime dependency of pyproject.toml and installs the package itself;
    creating the environment needs conda and the network, which CI has neither of."""
    import tomllib

    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda = {re.split(r"[<>=\s]", d)[0] for d in env["dependencies"] if isinstance(d, str)}
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    names = conda | {re.split(r"[<>=\s]", d)[0] for d in pip}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    needed = {re.split(r"[<>=\s\[]", d)[0] for d in project["dependencies"]}
    aliases = {"matplotlib": "matplotlib-base"}
    assert {aliases.get(n, n) for n in needed} <= names, needed - names
    assert "-e ." in pip


def test_pip_extras_the_docs_name_exist():
    """`pip install -e .` gives the `mpq` command; each `.[extra]` the docs name exists and installs
    what the docs say it is for (installing needs the network: CI installs `.[dev]` instead)."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["mpq"] == "mpq.cli:main"
    extras = project["optional-dependencies"]
    purpose = {"export": ("onnx", "onnxruntime"), "slurm": ("snakemake-executor-plugin-slurm",),
               "dali": ("nvidia-dali-cuda120",), "dali-cuda130": ("nvidia-dali-cuda130",)}
    named = set()
    for _, command in doc_commands():
        if command.startswith("pip install -e"):
            named |= set(re.findall(r"\[([\w-]+)\]", command))
    named |= set(re.findall(r"`\.\[([\w-]+)\]`", README))   # "or `.[dali-cuda130]`"
    assert {"export", "slurm", "dali"} <= named, named
    for extra in named:
        assert set(purpose[extra]) <= {re.split(r"[<>=\s]", d)[0] for d in extras[extra]}, extra


def _plan(cmd: list[str], workdir: Path, env=None) -> str:
    """A documented workflow command as a dry run into an empty directory (run from the repository
    root, as the README says; machine checks off: the configs name GPUs and data this machine lacks)."""
    proc = run([*cmd, "-n", "--directory", str(workdir)], REPO,
               env={"MPQ_SKIP_MACHINE_CHECKS": "1", **(env or {})})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Job stats:" in proc.stdout, proc.stdout[-2000:]
    return proc.stdout


def _block_commands(title: str) -> list[str]:
    block = re.search(r"```\n(.*?)```", section(title), re.S).group(1)
    return [ln.split("  #")[0].strip() for ln in block.splitlines() if ln.strip()]


def test_workflow_commands_plan_on_a_clean_directory(tmp_path):
    snakemake = str(Path(sys.executable).parent / "snakemake")
    lines = _block_commands("Running on GPUs and SLURM")
    cache = next(ln for ln in lines if ln.startswith("export SNAKEMAKE_OUTPUT_CACHE="))
    env = {"SNAKEMAKE_OUTPUT_CACHE": str(tmp_path / "cache")}   # the README's shared path, here a temporary one
    (tmp_path / "cache").mkdir()
    assert cache.split("=", 1)[0] == "export SNAKEMAKE_OUTPUT_CACHE"
    inline = [c for _, c in doc_commands() if c.startswith((".venv/bin/snakemake --cores", "snakemake --cores"))]
    assert len(inline) == 2, inline
    for i, line in enumerate([ln for ln in lines if ln.startswith("snakemake ")] + inline):
        if "profiles/slurm" in line:
            pytest.importorskip("snakemake_executor_plugin_slurm")
        argv = line.split()
        out = _plan([snakemake, *argv[1:]], tmp_path / f"run{i}", env)
        assert "pretrain" in out, line


def test_stage_help():
    proc = run([sys.executable, "stages/search.py", "--help"], REPO)
    assert proc.returncode == 0 and "--spec" in proc.stdout, proc.stderr


def test_recovering_commands_on_a_finished_run(finished_run):
    snakemake = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", "2"]
    for args in (["--unlock"], ["--rerun-incomplete"], ["-n", "--touch"]):
        proc = run([*snakemake, *args], finished_run)
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
        if args != ["--unlock"]:
            assert "Nothing to be done" in proc.stdout + proc.stderr, (args, proc.stdout[-1500:])
    # `snakemake --touch` on a run that is current marks nothing and changes no file
    before = {p: p.stat().st_mtime_ns for p in (finished_run / "results").rglob("*") if p.is_file()}
    proc = run([*snakemake, "--touch"], finished_run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_html_report_after_a_run(finished_run, tmp_path):
    report = tmp_path / "report.html"   # the README's report.html, outside the shared run
    proc = run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--report", str(report)],
               finished_run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = report.read_text(errors="replace")
    assert "summary" in html.lower() and "limpq-w3a3" in html


def test_the_command_line_block_runs_as_written(finished_run, tmp_path):
    """Every line of the README's `mpq` block, in order, on the policies and models of a finished run:
    {exp}/{policy} become the run's, A.yaml/B.yaml two of its policies, policy.yaml a ResNet-18
    policy (the block's convert and cost lines name ResNet-18), lists.yaml what `--to limpq` prints."""
    from mpq import models
    from mpq.cost import CostModel
    from mpq.policy import Policy

    (tmp_path / "results").symlink_to(finished_run / "results")
    policies = finished_run / "results/tiny/policies"
    shutil.copy(policies / "limpq-w3a3/policy.yaml", tmp_path / "A.yaml")
    shutil.copy(policies / "uniform-w4a4/policy.yaml", tmp_path / "B.yaml")
    names = CostModel.from_model(models.create("resnet18", num_classes=1000), 224).names
    Policy("resnet18", 1000, 224, names, [4, 3] * (len(names) // 2) + [4] * (len(names) % 2),
           [4] * len(names)).save(tmp_path / "policy.yaml")
    lines = _block_commands("Command-line tool and export")
    assert len(lines) == 7 and all(ln.startswith("mpq ") for ln in lines)
    for line in lines:
        for policy in (["limpq-w3a3", "ompq-ptq"] if "{policy}" in line else [None]):   # an LSQ and a PTQ model
            argv = line.replace("{exp}", "tiny").replace("{policy}", policy or "").split()[1:]
            if argv[0] == "export":
                argv[argv.index("--out") + 1] = f"export-{policy}/"
            proc = run([sys.executable, "-m", "mpq.cli", *argv], tmp_path)
            assert proc.returncode == 0, (line, proc.stderr[-2000:])
            assert proc.stdout.strip() or argv[0] == "convert" and "--out" in argv, line
            if argv[:3] == ["convert", "policy.yaml", "--to"]:
                (tmp_path / "lists.yaml").write_text(proc.stdout)
    assert (tmp_path / "export-limpq-w3a3/model.onnx").is_file() and (tmp_path / "export-ompq-ptq/model.onnx").is_file()
    assert Policy.load(tmp_path / "policy.yaml").arch == "resnet18"   # lists.yaml converted back


def test_config_overrides_merge_as_config_readme_says(finished_run, tmp_path):
    """`snakemake --configfile extra.yaml` deep-merges (one recipe key changed: only the policies
    using that recipe rerun), `--config key=value` overrides a key (a new seed reruns everything)."""
    from tiny_workflow import planned_jobs

    work = tmp_path / "run"
    shutil.copytree(finished_run, work, symlinks=True)
    (work / "extra.yaml").write_text("finetune:\n  lsq-dampen: {epochs: 2}\n")
    snakemake = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", "2", "-n"]
    out = run([*snakemake, "--configfile", "extra.yaml"], work).stdout
    jobs = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", out, re.M) if m.group(1) != "total"}
    assert jobs.get("finetune") == 1 and "pretrain" not in jobs and "search" not in jobs, jobs
    out = run([*snakemake, "--config", "seed=1"], work).stdout
    assert re.search(r"^pretrain\s+1$", out, re.M), out[-2000:]
    assert planned_jobs(work) == {}, "the overrides were dry runs: nothing changed"
