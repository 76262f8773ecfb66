#!/usr/bin/env bash
# One command on a fresh GPU machine: environment (with TransformerEngine), the GPU smoke
# test, then single-GPU throughput appended to docs/benchmarks.md with date and device.
#   bash bench/gpu/run.sh [throughput.py options]
set -euo pipefail
cd "$(dirname "$0")/../.."
nvidia-smi -L >/dev/null 2>&1 || { echo "bench/gpu/run.sh: no NVIDIA GPU here (nvidia-smi -L failed)" >&2; exit 2; }
make env                       # on a CUDA machine this also installs the gpu extra (TransformerEngine)
.venv/bin/python -m pytest -q -rs tests/gpu tests/pretrain/model/test_fast_path.py
.venv/bin/python bench/gpu/throughput.py --out bench/gpu/results.json --append-docs docs/benchmarks.md "$@"
