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

.PHONY: demo test bench venv install lint clean device-check

$(VENV)/.deps-installed:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade "pip>=23" "setuptools>=64" wheel
	# torch first, alone and pinned, so nothing else can pull a different build.
	$(PIP) install "$(TORCH_SPEC)"
	# The GPU machines' Triton, whose interpreter needs numpy < 2.4. torch's wheel asks for a newer
	# Triton, so this one is installed without dependency resolution, then checked by importing it.
	$(PIP) install --no-deps "$(TRITON_SPEC)"
	$(PIP) install "$(NUMPY_SPEC)"
	$(PY) -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
	touch $@

$(STAMP): $(VENV)/.deps-installed pyproject.toml setup.py $(wildcard csrc/*) $(wildcard csrc/solvers/*)
	# Dependencies already satisfied (torch, triton) are kept as installed: pip is not asked for
	# torch here, so it does not re-resolve torch's own pins.
	$(PIP) install -e ".[dev,bench]" --no-build-isolation "$(NUMPY_SPEC)"
	# LibMTL 1.1.5 (the peer-agreement tests drive its weighting classes) declares an old torchvision
	# that would pull in another torch: install it alone, without dependencies.
	$(PIP) install --no-deps "LibMTL==1.1.5"
	# Packages that depend on torch (TorchJD) make pip re-resolve torch's own Triton pin and upgrade
	# Triton; put the pinned one back last.
	$(PIP) install --no-deps --force-reinstall "$(TRITON_SPEC)"
	$(PY) -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__); assert torch.__version__.startswith('$(subst torch==,,$(TORCH_SPEC))')"
	$(PY) -m fastmtl.info || true
	touch $@

venv install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m fastmtl.bench demo

bench: $(STAMP)
	$(PY) -m fastmtl.bench sweep

# On a GPU machine with torch already installed (no venv, no network): build for that GPU, GPU
# tests, quick sweep; outputs in $$OUT or bench_out/device/. `make device-check DEVICE_CHECK_ARGS=--dry-run`
# runs every stage on CPU.
DEVICE_CHECK_ARGS ?=
device-check:
	bash tools/device_check.sh $(DEVICE_CHECK_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check fastmtl tests benchmarks

clean:
	rm -rf build *.egg-info fastmtl/_C*.so fastmtl/_build_info.py .pytest_cache
