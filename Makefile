# Two commands do everything on a fresh machine (Python >= 3.10 with venv):
#   make run    set up .venv, run the default workflow on the embedded digits dataset
#   make test   set up .venv, run the unit and integration tests
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.14.1 torchvision==0.29.1
CORES ?= 2

.PHONY: run test setup setup-dali clean-results

setup: $(VENV)/.installed

# NVIDIA DALI (the `dali` loader; its CPU path is tested here too). Optional: where the wheel cannot
# be installed (no registry, unsupported platform) the DALI tests skip instead of failing.
setup-dali: $(VENV)/.dali

$(VENV)/.dali: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[dali]" || echo "warning: DALI not installed; its tests will skip"
	touch $@

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

run: setup
	$(VENV)/bin/snakemake --cores $(CORES)

test: setup setup-dali
	$(PY) -m pytest -q --durations=30

clean-results:
	rm -rf results/
