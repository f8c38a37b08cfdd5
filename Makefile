# gradmanifold developer tasks. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help install test test-slow test-loaded lint bench demo golden samples figures clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv and install the package with the dev and torch extras

$(STAMP): pyproject.toml constraints-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints-test.txt -e '.[dev,torch]'
	touch $(STAMP)

test: install  ## run the test suite (sets everything up itself)
	$(PY) -m pytest -q

test-slow: install  ## run the test suite including the slow fault-injection trials
	HYPOTHESIS_PROFILE=ci $(PY) -m pytest -q -m "slow or not slow"

# tests/load.py starts the busy processes, runs each suite in turn (both run; each is timed) and stops them at
# the end, on failure or Ctrl-C too; each busy process also ends by itself when tests/load.py is gone.
test-loaded: install  ## run the default and slow suites with two CPU-bound processes beside them
	$(PY) tests/load.py --procs 2 \
		--run "$(PY) -m pytest -q" \
		--run "HYPOTHESIS_PROFILE=ci $(PY) -m pytest -q -m 'slow or not slow'"

lint: install  ## ruff (lint + format check) and mypy on the package
	$(PY) -m ruff check gradmanifold tests bench
	$(PY) -m ruff format --check gradmanifold tests bench
	$(PY) -m mypy

bench: install  ## run the benchmarks (tables on stdout, JSON in bench/results/)
	$(PY) -m bench

demo: install  ## analyze a sample store from a real training run
	$(VENV)/bin/gradmanifold analyze sample_logs/mlp_digits_adamw.zarr

golden: install  ## regenerate tests/golden/*.json from sample_logs (explicit, never automatic)
	$(PY) -m tests.golden.regenerate

samples: install  ## rebuild sample_logs/ from scratch (deterministic, torch on CPU)
	$(PY) sample_logs/make_samples.py

figures: install  ## regenerate docs/figures/*.png from sample_logs (README's picture, docs/PLOTS.md)
	mkdir -p docs/figures
	$(VENV)/bin/gradmanifold plot sample_logs/mlp_digits_adamw.zarr -o docs/figures/mlp_digits_adamw.png
	$(VENV)/bin/gradmanifold plot sample_logs/cnn_digits_spectra.zarr -o docs/figures/cnn_digits_spectra.png --dpi 75
	$(VENV)/bin/gradmanifold plot sample_logs/mlp_digits_updates.zarr -o docs/figures/mlp_digits_updates.png \
		--window 100 --dpi 80

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
