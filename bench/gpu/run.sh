#!/usr/bin/env bash
# One command on a fresh GPU machine: environment (with TransformerEngine), the GPU smoke
# test, then single-GPU throughput of our ~1B model and of torchtitan training the same
# shape, appended to docs/benchmarks.md with date and device.
#   bash bench/gpu/run.sh [throughput.py options]
set -euo pipefail
cd "$(dirname "$0")/../.."
nvidia-smi -L >/dev/null 2>&1 || { echo "bench/gpu/run.sh: no NVIDIA GPU here (nvidia-smi -L failed)" >&2; exit 2; }
make env                       # on a CUDA machine this also installs the gpu extra (TransformerEngine)
# torchtitan, the baseline, goes into its own directory with --no-deps, never into .venv:
# datasets (a torchtitan requirement) pins huggingface-hub<2, fsspec, dill and multiprocess
# below what the project venv holds (transformers needs huggingface-hub>=1.31, the venv has
# 2.x), and without a resolver nothing can replace the pinned torch. The list is every
# package torchtitan 0.3.0 imports that the project venv lacks, at the versions checked on
# CPU (bench/gpu/torchtitan_same_shape.py --cpu-check; docs/gpu.md).
TT_SITE=runs/bench_gpu/torchtitan_site
if [ ! -f "$TT_SITE/torchtitan-0.3.0.dist-info/METADATA" ]; then
  .venv/bin/python -m pip install -q --no-deps --target "$TT_SITE" -c .venv/constraints.txt \
    torchtitan==0.3.0 torchdata==0.11.0 torch_checkpointing==0.1.1 spmd_types==0.2.3 tyro==1.0.17 \
    docstring-parser==0.18.0 typeguard==4.6.1 datasets==4.7.0 tensorboard==2.21.0 absl-py==2.5.1 \
    markdown==3.11.3 werkzeug==3.1.9
fi
PYTHONPATH="$TT_SITE:." .venv/bin/python bench/gpu/torchtitan_same_shape.py --check-only   # same parameter count as ours
.venv/bin/python -m pytest -q -rs tests/gpu tests/pretrain/model/test_fast_path.py
.venv/bin/python bench/gpu/throughput.py --torchtitan-site "$TT_SITE" \
  --out bench/gpu/results.json --append-docs docs/benchmarks.md "$@"
