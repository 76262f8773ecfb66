"""Run a worker script under torch.distributed.run (gloo on CPU, NCCL on a CUDA host).

On a CUDA host the trainer picks NCCL and one GPU per rank (pretrain/train/setup.py),
so a launch needs as many GPUs as ranks; with fewer the test is skipped, saying so.
Workers that build their own gloo group and compare CPU tensors pass ``cpu_only``:
the reason they skip on a CUDA host (their GPU counterpart is tests/gpu/).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def skip_unless_ranks_fit(nproc: int, cpu_only: str | None = None) -> None:
    """Skip (with the reason) a launch this host cannot run: see the module docstring."""
    import pytest
    import torch

    if not torch.cuda.is_available():
        return
    if cpu_only:
        pytest.skip(f"CPU-only worker: {cpu_only}")
    if torch.cuda.device_count() < nproc:
        pytest.skip(f"needs {nproc} GPUs under NCCL (one per rank); this host has {torch.cuda.device_count()}")


def torchrun(nproc: int, args: list[str], timeout: int = 300, env: dict | None = None,
             cwd: Path = REPO_ROOT, cpu_only: str | None = None) -> subprocess.CompletedProcess:
    """Launch ``python -m torch.distributed.run`` and fail loudly with the workers' output."""
    skip_unless_ranks_fit(nproc, cpu_only)
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    # WANDB_MODE would override each scenario's logging.wandb.mode: let the config decide.
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "WANDB_MODE"):
        full_env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", "--nnodes=1", *args]
    result = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result
