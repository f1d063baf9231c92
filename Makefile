# fastmtl: `make demo` (speed table + a small training run) and `make test` (the whole suite).
# Both create .venv, install torch the way this machine needs it, then fastmtl with its CUDA
# extension when torch has CUDA and nvcc exists.

PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
# Pinned: the extension is built against exactly this torch. Override for other machines,
# e.g. `make test TORCH_SPEC=torch==2.11.0`.
TORCH_SPEC  ?= torch==2.14.1
TRITON_SPEC ?= triton==3.6.0
NUMPY_SPEC  ?= numpy<2.4
CUDA_HOME   ?= $(shell sh tools/cuda_home.sh)
TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
MAX_JOBS    ?= 2
PYTEST_ARGS ?=

export CUDA_HOME TORCH_CUDA_ARCH_LIST MAX_JOBS

STAMP := $(VENV)/.fastmtl-installed

.PHONY: demo test bench venv install lint clean

$(VENV)/.deps-installed:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade "pip>=23" "setuptools>=64" wheel
	# torch first, alone and pinned, so nothing else can pull a different build.
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install "$(TRITON_SPEC)" "$(NUMPY_SPEC)" "$(TORCH_SPEC)"
	touch $@

$(STAMP): $(VENV)/.deps-installed pyproject.toml setup.py $(wildcard csrc/*)
	$(PIP) install -e ".[dev,bench]" --no-build-isolation "$(TORCH_SPEC)" "$(TRITON_SPEC)" "$(NUMPY_SPEC)"
	$(PY) -m fastmtl.info || true
	touch $@

venv install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m fastmtl.bench demo

bench: $(STAMP)
	$(PY) -m fastmtl.bench sweep

lint: $(STAMP)
	$(PY) -m ruff check fastmtl tests benchmarks

clean:
	rm -rf build *.egg-info fastmtl/_C*.so fastmtl/_build_info.py .pytest_cache
