# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
export RAY_AUTH_MODE ?= disabled
export WANDB_MODE ?= offline

.PHONY: setup demo test test-all gpu-check clean

setup: $(VENV)/.installed

# CPU torch is pinned exactly: that pin resolves to a local CPU wheel, where an unpinned torch pulls CUDA builds.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	@# Compile the CPU proxy kernels now (~30-60 s, once per machine) rather than inside the first candidate.
	$(PY) -c "from flashsearch.kernels import cpu as k; print('CPU kernels built:', k.available())"
	touch $@

demo: setup
	$(VENV)/bin/flashsearch run search_spaces/hybrid_1b.yaml

test: setup
	$(PY) -m pytest -q

# slow and GPU tests too (GPU ones skip themselves without CUDA)
test-all: setup
	$(PY) -m pytest -q -m ''

# Every check that needs CUDA, one run (experiments/gpu_check); without CUDA: "no CUDA device", exit 2.
# No setup dependency: a device image brings its own environment (make gpu-check PY=python; docs/gpu.md).
gpu-check:
	@$(PY) -m experiments run gpu_check

clean:
	rm -rf runs .pytest_cache
