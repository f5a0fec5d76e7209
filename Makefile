# Two commands do everything on a fresh machine (Python >= 3.10 with venv):
#   make run    set up .venv, run the default workflow on the embedded digits dataset
#   make test   set up .venv, run the unit and integration tests
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.14.1 torchvision==0.29.1
CORES ?= 2

.PHONY: run test setup clean-results

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

run: setup
	$(VENV)/bin/snakemake --cores $(CORES)

test: setup
	$(PY) -m pytest -q

clean-results:
	rm -rf results/
