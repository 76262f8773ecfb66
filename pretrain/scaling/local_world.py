"""A gloo process group of one with megatron's model-parallel state (TP1, PP1).

Why: megatron-core layers read TP/PP sizes from ``parallel_state`` even in a
single process; the coordinate check and the small-scale benchmark run one
process, so they need this world without torchrun.
"""

from __future__ import annotations

import os
import socket

import torch.distributed as dist


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_single_process_world(seed: int = 0) -> None:
    """Start (once) a world of one process with TP1/PP1 and the CPU shims when CUDA is absent."""
    from megatron.core import parallel_state, tensor_parallel

    from pretrain.cpu_shims import activate_cpu_shims

    activate_cpu_shims()
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        dist.init_process_group("gloo", rank=0, world_size=1)
    if dist.get_world_size() != 1:
        raise RuntimeError(f"single-process tools need a world of 1, found {dist.get_world_size()}")
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel()
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
