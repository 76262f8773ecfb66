# Two commands for a fresh machine: `make demo` and `make test`.
# Each creates the virtual environment (.venv) when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
# Cap intra-op threads: the 2-core CI machine runs several worker processes.
export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false
export WANDB_MODE ?= offline
export RAY_DEDUP_LOGS ?= 0
export PYTHONHASHSEED ?= 0

.PHONY: demo test test-fast env clean bench-data bench-tokenizer rehearsal build-tools

env: $(STAMP)

# kenlm (data_pipeline.perplexity) is a source distribution: pip compiles it, which needs a C++ compiler
# and Python.h. On a bare Debian/Ubuntu machine they are installed once; where both exist this does nothing.
build-tools:
	@if ! command -v c++ >/dev/null 2>&1 || ! $(PYTHON) -c "import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))"; then \
	  SUDO=$$(command -v sudo || true); $$SUDO apt-get update -q && $$SUDO apt-get install -y -q g++ python3-dev; fi

# torch goes in first and is pinned through a constraints file, so no resolver
# can replace it with a CUDA build on a machine without a GPU. On a GPU machine
# the same pin pulls the normal CUDA wheel from the index.
$(STAMP): pyproject.toml | build-tools
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	echo "torch==$(TORCH_VERSION)" > $(VENV)/constraints.txt
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -c $(VENV)/constraints.txt -e ".[test]"
	# A CUDA machine also gets TransformerEngine (train.gpu.spec=auto requires it there).
	if nvidia-smi -L >/dev/null 2>&1; then \
	  $(PY) -m pip install -q -c $(VENV)/constraints.txt --no-build-isolation -e ".[test,gpu]"; fi
	$(PY) -c "import torch, megatron.core, ray, hydra, sentencepiece, transformers; print('environment ready: torch', torch.__version__, 'megatron-core', megatron.core.__version__)"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m launch.demo

test: $(STAMP)
	$(PY) -m pytest -q -ra --durations=15

test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m "not slow"

# A multi-node rehearsal on an emulated 3-node Slurm (root; docs/rehearsal.md):
# runs/rehearsal/rehearsal.json and timeline.png. Faults: slow_rank, sigkill, sigstop (the full preset's);
# `make rehearsal NODE_DOWN=19` adds node_down after step 19. The cluster stays up; `bash scripts/rehearsal/cluster.sh down`.
rehearsal: $(STAMP)
	$(PY) -m launch.rehearsal --out runs/rehearsal $(if $(NODE_DOWN),--node-down $(NODE_DOWN))

clean:
	rm -rf runs outputs multirun
