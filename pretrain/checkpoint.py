"""Distributed checkpoints: save, resume (at any TP/PP/DP), keep-last-N, a crash-safe marker.

Layout (``run_dir/checkpoints``)::

    iter_0000100/          megatron dist_checkpointing (torch_dist) directory
        run_config.yaml    the resolved config that wrote it (rebuilds the model)
        common.pt, metadata.json, __*.distcp ...
    latest                 text: "iter_0000100" -- written (temp + os.replace) only
                           after every rank finished writing that checkpoint

A checkpoint directory without the marker pointing at it is never loaded
automatically, so a run killed mid-save resumes from the previous one.

State: ``model`` (or ``model0``.. per virtual stage), ``optimizer`` (megatron's
sharded optimizer state, fully reshardable across TP/PP/DP), ``rng_state``
(one ShardedObject per rank; restored only when the layout is unchanged),
and plain values ``iteration``, ``consumed_samples``, ``scheduler``,
``layout``, ``tokens`` (rank 0 writes these to common.pt).
"""

from __future__ import annotations

import os
import queue
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject

from pretrain.config.resolve import (  # noqa: F401 (re-exported: one place for checkpoint paths)
    LATEST,
    RUN_CONFIG,
    checkpoint_name,
    checkpoints_root,
    latest_checkpoint,
    resolve_load_dir,
    saved_run_config,
)
OPTIMIZER_SHARDING = ("fully_reshardable", "dp_reshardable")


def optimizer_metadata(cfg: DictConfig) -> dict[str, str]:
    """``checkpoint.optimizer_sharding``: fully_reshardable (TP/PP/DP may change on resume;
    gathers each model-parallel shard's optimizer state on its DP rank 0 while saving) or
    dp_reshardable (fully parallel write, only DP may change)."""
    kind = cfg.checkpoint.optimizer_sharding
    if kind not in OPTIMIZER_SHARDING:
        raise ValueError(f"checkpoint.optimizer_sharding={kind!r}: use one of {OPTIMIZER_SHARDING}")
    return {"distrib_optim_sharding_type": kind}





def write_latest_marker(run_dir: str | Path, iteration: int) -> None:
    """Atomically point ``latest`` at a fully written checkpoint."""
    root = checkpoints_root(run_dir)
    tmp = root / f".{LATEST}.tmp.{os.getpid()}"
    tmp.write_text(checkpoint_name(iteration) + "\n")
    os.replace(tmp, root / LATEST)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    root = checkpoints_root(run_dir)
    return sorted(p for p in root.glob("iter_*") if p.is_dir()) if root.is_dir() else []


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints (never the latest)."""
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return []
    complete = [p for p in list_checkpoints(run_dir) if p.name <= latest.name]
    doomed = complete[:-keep_last] if keep_last > 0 else []
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed




# ----------------------------------------------------------------------------
# What goes into a checkpoint
# ----------------------------------------------------------------------------

@dataclass
class TrainProgress:
    iteration: int = 0
    consumed_samples: int = 0
    tokens: int = 0
    # Loop state beyond the data position (spike guard: skipped sample ranges, detector window).
    trainer_state: dict = field(default_factory=dict)


def current_layout(cfg: DictConfig) -> dict[str, int]:
    p = cfg.parallel
    return {"tp": p.tensor_model_parallel_size, "pp": p.pipeline_model_parallel_size,
            "dp": p.data_parallel_size, "vpp": p.virtual_pipeline_model_parallel_size or 0}


def _rng_state() -> dict[str, Any]:
    return {"random": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}


def _restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _rng_sharded_object(state: Any) -> ShardedObject:
    rank, world = dist.get_rank(), dist.get_world_size()
    return ShardedObject("rng_state", state, (world,), (rank,), replica_id=0)


def _model_key(index: int, num_chunks: int) -> str:
    return "model" if num_chunks == 1 else f"model{index}"


def _unwrap(chunk: torch.nn.Module) -> torch.nn.Module:
    while hasattr(chunk, "module"):
        chunk = chunk.module
    return chunk


def sharded_state(model_chunks: list, optimizer, scheduler, progress: TrainProgress, cfg: DictConfig,
                  with_rng: bool, with_optimizer: bool, is_loading: bool) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for i, chunk in enumerate(model_chunks):
        state[_model_key(i, len(model_chunks))] = _unwrap(chunk).sharded_state_dict()
    if with_optimizer and optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(state, is_loading=is_loading,
                                                          metadata=optimizer_metadata(cfg))
    if with_rng:
        state["rng_state"] = _rng_sharded_object(_rng_state())
    state["iteration"] = progress.iteration
    state["consumed_samples"] = progress.consumed_samples
    state["tokens"] = progress.tokens
    state["trainer_state"] = progress.trainer_state
    state["scheduler"] = scheduler.state_dict() if scheduler is not None else None
    state["layout"] = current_layout(cfg)
    return state


# ----------------------------------------------------------------------------
# Save
# ----------------------------------------------------------------------------

def save_synchronously(state: dict, directory: str | Path) -> None:
    """``dist_checkpointing.save`` with the writers' results collected in this process.

    megatron-core 0.16 hands every save a ``multiprocessing.Manager().Queue()``
    (a spawned server process), needed when an async save writes from another
    process. The server imports torch to unpickle the first results it receives:
    on a 2-core CPU box a process' first save took 4.5-7 s with 2 processes and
    16-20 s with 8 (now < 1 s). A synchronous save runs its forked writers with
    their own local queue and reads the results in the saving process itself, so
    a plain queue serves. Every synchronous save in the project goes through here.
    """
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    manager_queue = filesystem_async._get_write_results_queue
    filesystem_async._get_write_results_queue = queue.Queue
    try:
        dist_checkpointing.save(state, str(directory))
    finally:
        filesystem_async._get_write_results_queue = manager_queue


class CheckpointWriter:
    """Writes checkpoints, synchronously or through megatron's async queue.

    Async: the state is snapshotted to host memory and written by a forked
    process while training continues; :meth:`poll` (called every step, on
    every rank) finalises finished saves: run_config.yaml, the ``latest``
    marker, pruning.
    """

    def __init__(self, cfg: DictConfig, resolved_config: DictConfig, async_save: bool) -> None:
        self.cfg = cfg
        self.resolved_config = resolved_config
        self.async_save = async_save
        self.saved: list[int] = []
        self._queue = None
        if async_save:
            from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

            self._queue = AsyncCallsQueue(persistent=False)

    def _finalize(self, iteration: int, directory: Path) -> Callable[[], None]:
        def finalize() -> None:
            dist.barrier()
            if dist.get_rank() == 0:
                OmegaConf.save(self.resolved_config, directory / RUN_CONFIG, resolve=True)
                write_latest_marker(self.cfg.run_dir, iteration)
                prune_checkpoints(self.cfg.run_dir, int(self.cfg.checkpoint.keep_last))
            dist.barrier()
            self.saved.append(iteration)
        return finalize

    def save(self, model_chunks: list, optimizer, scheduler, progress: TrainProgress) -> Path:
        directory = checkpoints_root(self.cfg.run_dir) / checkpoint_name(progress.iteration)
        if dist.get_rank() == 0:
            if directory.exists():  # leftovers of a save that never completed
                shutil.rmtree(directory)
            directory.mkdir(parents=True)
        dist.barrier()
        self.wait()  # one save in flight at a time
        state = sharded_state(model_chunks, optimizer, scheduler, progress, self.cfg,
                              with_rng=True, with_optimizer=True, is_loading=False)
        finalize = self._finalize(progress.iteration, directory)
        if self._queue is None:
            save_synchronously(state, directory)
            finalize()
        else:
            request = dist_checkpointing.save(state, str(directory), async_sharded_save=True)
            request.add_finalize_fn(finalize)
            self._queue.schedule_async_request(request)
        return directory

    def poll(self) -> None:
        if self._queue is not None:
            self._queue.maybe_finalize_async_calls(blocking=False)

    def wait(self) -> None:
        if self._queue is not None:
            self._queue.maybe_finalize_async_calls(blocking=True)

    def close(self) -> None:
        if self._queue is not None:
            self.wait()
            self._queue.close()


# ----------------------------------------------------------------------------
# Load
# ----------------------------------------------------------------------------

def materialize_optimizer_state(optimizer) -> None:
    """Give a fresh optimizer its state tensors, so a checkpoint can be loaded into them.

    megatron builds the loading template from the optimizer's own state, which
    torch's Adam creates lazily on the first step.  A step with zero gradients
    creates it; everything it touches is overwritten by the load that follows.
    """
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        torch_optimizer = getattr(inner, "optimizer", None)
        if torch_optimizer is None or len(torch_optimizer.state) > 0:
            continue
        for group in torch_optimizer.param_groups:
            for param in group["params"]:
                param.grad = torch.zeros_like(param)
        torch_optimizer.step()
        torch_optimizer.zero_grad()


def tolerate_torch_adam_step(optimizer) -> None:
    """Work around megatron-core 0.16's fully_reshardable load with torch's Adam.

    Without apex/TE megatron falls back to ``torch.optim.AdamW``, whose state
    has a per-param ``step``; the loader sets ``step`` from the param groups but
    then copies every *destination* state key from the checkpoint tensors,
    which never hold ``step`` (KeyError). The wrapper (on the instance, only
    when the method exists) hands the loader the already-restored ``step``.
    """
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        setter = getattr(inner, "_set_main_param_and_optimizer_states", None)
        index_map = getattr(inner, "model_param_group_index_map", None)
        if setter is None or index_map is None or getattr(setter, "_tolerant", False):
            continue

        def tolerant(model_param, tensors, _inner=inner, _setter=setter, _index_map=index_map):
            if "step" not in tensors:
                group_index, group_order = _index_map[model_param]
                main_param = _inner.optimizer.param_groups[group_index]["params"][group_order]
                step = _inner.optimizer.state.get(main_param, {}).get("step")
                if step is not None:
                    tensors = {**tensors, "step": step}
            return _setter(model_param, tensors)

        tolerant._tolerant = True
        inner._set_main_param_and_optimizer_states = tolerant


def untie_adam_steps(optimizer) -> None:
    """megatron-core 0.16 restores torch Adam's ``step`` as ONE tensor shared by every
    parameter; torch increments it in place per parameter, so after a resume the
    bias correction would advance N times per step. Give each parameter its own copy."""
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        torch_optimizer = getattr(inner, "optimizer", None)
        for state in getattr(torch_optimizer, "state", {}).values():
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].clone()


def load_checkpoint(directory: Path, model_chunks: list, optimizer, scheduler,
                    cfg: DictConfig) -> TrainProgress:
    """Restore model, optimizer, scheduler and (same layout only) RNG; return the progress."""
    if optimizer is not None:
        materialize_optimizer_state(optimizer)
    common = dist_checkpointing.load_common_state_dict(str(directory))
    if "optimizer" not in common:
        return load_model_only(directory, model_chunks)
    same_layout = common.get("layout") == current_layout(cfg)
    template = sharded_state(model_chunks, optimizer, scheduler, TrainProgress(), cfg,
                             with_rng=same_layout, with_optimizer=optimizer is not None,
                             is_loading=True)
    with torch.no_grad():  # fp32 distributed-optimizer state is loaded into leaf tensors
        state = dist_checkpointing.load(template, str(directory))
    for i, chunk in enumerate(model_chunks):
        _unwrap(chunk).load_state_dict(state[_model_key(i, len(model_chunks))])
    if optimizer is not None:
        tolerate_torch_adam_step(optimizer)
        optimizer.load_state_dict(state["optimizer"])
        untie_adam_steps(optimizer)
    if scheduler is not None and state.get("scheduler"):
        scheduler.load_state_dict(state["scheduler"])
    if same_layout and state.get("rng_state") is not None:
        _restore_rng_state(state["rng_state"])
    return TrainProgress(iteration=int(state["iteration"]),
                         consumed_samples=int(state["consumed_samples"]),
                         tokens=int(state.get("tokens", 0)),
                         trainer_state=dict(state.get("trainer_state") or {}))


def load_model_only(directory: Path, model_chunks: list) -> TrainProgress:
    """Weights from a checkpoint that holds nothing else (``launch.import_hf``'s output).

    Continued pretraining from an imported Hugging Face model starts with fresh
    Adam moments, a fresh LR schedule and the data stream from its beginning:
    there is no training state to restore, and pretending otherwise would hide it.
    """
    template = {_model_key(i, len(model_chunks)): _unwrap(chunk).sharded_state_dict()
                for i, chunk in enumerate(model_chunks)}
    state = dist_checkpointing.load(template, str(directory))
    for i, chunk in enumerate(model_chunks):
        _unwrap(chunk).load_state_dict(state[_model_key(i, len(model_chunks))])
    if dist.get_rank() == 0:
        print(f"initialised from the model-only checkpoint {directory} (e.g. an HF import): "
              "fresh optimizer state, LR schedule and data position", flush=True)
    return TrainProgress()


def load_model_for_inference(checkpoint_dir: str | Path, dtype: torch.dtype = torch.float32):
    """A single-process TP1/PP1 ``GPTModel`` with the weights of any checkpoint.

    For exporters and evaluation: starts a 1-process gloo group if none exists,
    rebuilds the model from the checkpoint's ``run_config.yaml`` and loads only
    the model weights (whatever TP/PP wrote them). Returns ``(model, cfg)``.
    """
    from pretrain.cpu_shims import activate_cpu_shims
    from pretrain.model.teleflm import build_model

    activate_cpu_shims()
    checkpoint_dir = Path(checkpoint_dir)
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        if "MASTER_PORT" not in os.environ:
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                os.environ["MASTER_PORT"] = str(s.getsockname()[1])
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel()
        tensor_parallel.model_parallel_cuda_manual_seed(0)
    cfg = saved_run_config(checkpoint_dir)
    cfg.parallel.update(tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
                        virtual_pipeline_model_parallel_size=None, data_parallel_size=1,
                        sequence_parallel=False)
    cfg.train.bf16 = dtype == torch.bfloat16
    cfg.train.recompute = "none"
    model = build_model(cfg, pre_process=True, post_process=True)
    state = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(checkpoint_dir))
    model.load_state_dict(state["model"])
    return model.eval(), cfg
