# Two commands set up everything on a fresh Linux machine with Python >= 3.11: `make up`, `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# CPU build of torch: never pulls CUDA wheels on a CPU box. GPU boxes: make TORCH_SPEC="torch==2.13.0" TORCH_INDEX=... install
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: install up test test-fast lint format bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[train,test,lint]"
	$(PIP) install -q -e ".[triton]" || echo "warning: nvidia-pytriton not installable here; Triton tests will skip"
	$(PY) -m poseloop.cli weights fetch --quiet || echo "warning: pretrained backbone weights not fetched (offline?); they are fetched on first use"
	touch $@

install: $(VENV)/.installed

up: install
	$(VENV)/bin/poseloop up

# the whole suite: real datasets, Redis, Celery workers, uvicorn and tritonserver where present. Files are spread
# over TEST_WORKERS pytest-xdist processes (whole files per worker, so module fixtures are built once); much of
# the suite waits on servers and subprocesses, so two workers on two cores overlap that waiting.
TEST_WORKERS ?= 2
test: install
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=20

# unit tests only (no dataset, Redis, Triton or server processes): the inner dev loop, under 2 minutes
test-fast: install
	$(VENV)/bin/pytest -q -m "not slow and not data and not integration"

# ruff (lint + format check), mypy, import contracts
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install
	$(VENV)/bin/poseloop bench infer

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
