"""Process-level set-up shared by every backend: device, process groups, seeds, FLOP figures.

Kept apart from the loop and the backends so that the held-out evaluator, the
growth runner and the tests can use it without importing a training loop.
"""

from __future__ import annotations

import os
import random
import socket
import sys
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf


def world_size_from_env() -> int | None:
    return int(os.environ["WORLD_SIZE"]) if "WORLD_SIZE" in os.environ else None


def device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def collective_timeout(cfg: DictConfig) -> timedelta:
    """``train.fault.collective_timeout_s``: how long any collective may wait before it fails. The
    backstop behind the hang watchdog (docs/fault_tolerance.md), which acts in seconds to minutes."""
    return timedelta(seconds=float(cfg.train.fault.collective_timeout_s))


def warn_if_restarts_share_the_store() -> None:
    """torchrun with restarts and the agent's shared TCPStore: a restarted group can read the
    previous attempt's process-group keys and fail to connect (pytorch#135712). Say how to avoid it."""
    if int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0) > 0 and \
            os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and os.environ.get("RANK") == "0":
        print("warning: torchrun --max-restarts with the agent's shared TCPStore: a restart may fail to "
              "connect (pytorch#135712); set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 and use a c10d rendezvous "
              "(--standalone or --rdzv-backend=c10d), as launch/ does", file=sys.stderr, flush=True)


def init_distributed(cfg: DictConfig) -> None:
    """Process groups (NCCL on GPU, gloo on CPU), megatron's TP/PP/DP groups, every seed."""
    from megatron.core import parallel_state, tensor_parallel

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        warn_if_restarts_share_the_store()
        if "RANK" not in os.environ:  # a plain single-process run: be our own rendezvous
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(free_port()))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=collective_timeout(cfg))
    p = cfg.parallel
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=p.tensor_model_parallel_size,
        pipeline_model_parallel_size=p.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=p.virtual_pipeline_model_parallel_size or None,
        distributed_timeout_minutes=collective_timeout(cfg).total_seconds() / 60,
    )
    seed = cfg.train.seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def shutdown() -> None:
    """The end of a training process (every caller exits next): process groups torn down, and
    the heap frozen so that the interpreter's exit skips the garbage collector's passes."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
    freeze_heap_for_exit()


def freeze_heap_for_exit() -> None:
    """torch and megatron-core leave ~400k objects alive; the collections the interpreter runs
    at exit walk them all, ~2 s of CPU per process for nothing (measured on a 2-core box: a
    process that imports pretrain.train.run and exits, 7.6 s of CPU; with this first, 6.0 s).
    gc.freeze() moves what is alive now out of the collector's reach: atexit handlers still
    run, reference counting still closes files; only cyclic garbage left at exit stays
    uncollected, as it may anyway at interpreter exit."""
    import gc

    gc.freeze()


def flops_per_token(cfg: DictConfig) -> float:
    from pretrain.tools.flops import model_flops_per_token

    return model_flops_per_token(OmegaConf.to_container(cfg.model, resolve=True), cfg.model.seq_length,
                                 padded_vocab=cfg.model.padded_vocab_size)


def peak_tflops() -> float | None:
    from pretrain.tools.flops import detect_peak_bf16_tflops

    return detect_peak_bf16_tflops()
