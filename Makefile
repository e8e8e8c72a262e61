# Two commands on a fresh machine:  `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# JAX first: its session is the longest, and `make test` runs TEST_JOBS
# backends at a time (each a process of its own, as the backend needs).
BACKENDS ?= jax tensorflow torch
TEST_JOBS ?= 2
DEMO_BACKEND ?= jax
PYTEST_ARGS ?=

.PHONY: install demo test test-% check-install lint format bench clean

# requirements-ci.txt pins the CPU builds: torch==2.13.0 (the wheel on this
# machine's disk), tensorflow-cpu, jax[cpu]; a bare `torch` pulls a CUDA build.
$(STAMP): pyproject.toml requirements-ci.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-ci.txt -e ".[dev]"
	$(BIN)/pip install -q --no-deps keras-hub==0.32.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/keras-tfkd study --backend $(DEMO_BACKEND) --output-dir runs/study

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(MAKE) -j$(TEST_JOBS) --output-sync=target $(addprefix test-,$(BACKENDS))

test-%: $(STAMP)
	KERAS_BACKEND=$* $(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# The built wheel in fresh venvs with only [jax] / [torch] (no TensorFlow):
# the README's Ten-lines block, the study, a run and notebook 01 (smoke).
check-install:
	PYTHON=$(PYTHON) bash .ci/check_install jax torch

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
