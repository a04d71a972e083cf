# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv by itself.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.torchdx-installed

.PHONY: demo test lint format bench docs figures gpu-check clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build of torch 2.13.0 lies on this machine's disk; any other version downloads GBs
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m diagnostics.cond_ablation

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

docs: $(STAMP)
	$(PY) -m contracts.docs

# fill the <!-- fig --> markers in README.md and docs/ from docs/results/*.json
figures: $(STAMP)
	$(PY) -m benchmarks.render_figures

# where a CUDA device is present: gpu tests, host syncs per tool, overhead ratios, fp16 overflow
gpu-check: $(STAMP)
	$(PY) -m benchmarks.gpu_check

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done
	$(PY) -m benchmarks.fault_zoo

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis runs
