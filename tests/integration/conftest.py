"""Integration fixtures: one finished tiny workflow per session, shared by the modules that read it
(the tests that change a config copy it first)."""
import pytest

from tiny_workflow import TINY, snakemake, write_config


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("wf")
    write_config(workdir, TINY)
    snakemake(workdir)
    return workdir
