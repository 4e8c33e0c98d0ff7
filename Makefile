# Two commands on a fresh CPU machine: `make train` (the default run) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU wheel of torch; on a GPU machine install your CUDA torch first (README: GPU install).
TORCH ?= torch==2.13.0

.PHONY: setup train test test-fast sweep-smoke report clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

train: setup
	$(PY) train.py

# Two pytest-xdist workers (CI has 2 cores), each given whole files, longest first (tests/conftest.py says
# why). A single file while you work: $(PY) -m pytest -q tests/<file> (no -n: worker start-up costs more).
PYTEST_WORKERS ?= 2
XDIST := -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: setup
	$(PY) -m pytest -q $(XDIST)

test-fast: setup
	$(PY) -m pytest -q $(XDIST) -m "not slow"

sweep-smoke: setup
	$(PY) sweep.py experiment=split_ablation_smoke

clean:
	rm -rf logs .cache
