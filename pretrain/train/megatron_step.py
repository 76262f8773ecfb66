"""The megatron-core backend: model chunks under DDP, the distributed optimizer, pipeline schedules.

Order matters and is kept explicit in :func:`build_megatron_step`: model
chunks -> DDP -> optimizer -> scheduler -> schedule hooks; the checkpoint is
loaded by the caller afterwards.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from omegaconf import DictConfig

from pretrain import checkpoint as ckpt
from pretrain.checkpoint import TrainProgress
from pretrain.data import Datasets, microbatches
from pretrain.model.fast_path import fast_path_for, in_use
from pretrain.train.forward import ForwardHooks, forward_step
from pretrain.train.optim import group_lrs, restore_group_lrs, step_with_grad_norm
from pretrain.train.setup import device


def build_model_chunks(cfg: DictConfig, check_for_nan_in_grad: bool, initialize: bool = True) -> list[torch.nn.Module]:
    """This rank's model chunks (one per virtual pipeline stage), DDP-wrapped.

    ``check_for_nan_in_grad``: False when spike recovery handles a NaN gradient (skip or
    roll back) instead of megatron raising on it. ``initialize``: False when a checkpoint
    of the same shape is loaded next (a grown model always initialises its new entries)."""
    from megatron.core import parallel_state
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.transformer.module import Float16Module

    from pretrain.growth.masked import build_masked_model, growth_block
    from pretrain.model.teleflm import build_model

    # A grown stage (cfg.growth, docs/growth.md) builds the MSG-masked model; same state dict.
    grown = growth_block(cfg) is not None
    builder = build_masked_model if grown else partial(build_model, initialize=initialize)
    vpp = cfg.parallel.virtual_pipeline_model_parallel_size or None
    chunks = []
    for vp in range(vpp or 1):
        vp_stage = vp if vpp else None
        chunk = builder(
            cfg,
            pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
            post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
            vp_stage=vp_stage)
        if torch.cuda.is_available():
            chunk.cuda(torch.cuda.current_device())
        chunks.append(chunk)
    config = chunks[0].config
    if cfg.train.bf16:
        chunks = [Float16Module(config, chunk) for chunk in chunks]
    ddp_config = DistributedDataParallelConfig(
        **fast_path_for(cfg).ddp_kwargs(),
        use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
        check_for_nan_in_grad=check_for_nan_in_grad,
    )
    wrapped = [DistributedDataParallel(config=config, ddp_config=ddp_config, module=chunk,
                                       disable_bucketing=i > 0)
               for i, chunk in enumerate(chunks)]
    for chunk in wrapped:
        chunk.broadcast_params()
    return wrapped


def wire_schedule_hooks(model: list, optimizer, cfg: DictConfig) -> None:
    """Tell the pipeline schedule how to scale the loss and when to sync grads/params."""
    from megatron.core.distributed import finalize_model_grads

    config = model[0].config
    config.grad_scale_func = optimizer.scale_loss
    config.finalize_model_grads_func = finalize_model_grads
    fast_path = fast_path_for(cfg)
    if fast_path.overlap_grad_reduce:
        no_sync = [chunk.no_sync for chunk in model]
        config.no_sync_func = no_sync[0] if len(model) == 1 else no_sync
    if fast_path.overlap_param_gather:
        param_sync = [chunk.start_param_sync for chunk in model]
        config.param_sync_func = param_sync[0] if len(model) == 1 else param_sync


class ParamsSynced:
    """With overlapped param gathers the weights are only complete after the next
    forward's pre-hook; force the gather before checkpointing or evaluating."""

    def __init__(self, model: list, enabled: bool) -> None:
        self.model, self.enabled = model, enabled

    def __enter__(self):
        if self.enabled:
            for chunk in self.model:
                chunk.disable_forward_pre_hook(param_sync=True)

    def __exit__(self, *exc):
        if self.enabled:
            for chunk in self.model:
                chunk.enable_forward_pre_hook()


def reduce_losses(losses: list[dict]) -> float:
    """Mean token loss of the global batch, known on every rank afterwards."""
    from megatron.core import parallel_state

    total = torch.zeros(2, dtype=torch.float64, device=device())
    if parallel_state.is_pipeline_last_stage(ignore_virtual=True) and \
            parallel_state.get_tensor_model_parallel_rank() == 0:
        for item in losses:
            total += item["lm loss"].to(total)
    dist.all_reduce(total)
    return (total[0] / total[1].clamp(min=1)).item()


class Wrapping:
    """Sample indices past the planned stream (after spike data skips) wrap to its start."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __getitem__(self, index: int):
        return self.dataset[index % len(self.dataset)]


class MegatronStep:
    """:class:`pretrain.train.backend.TrainStep` on megatron-core."""

    name = "megatron"

    def __init__(self, cfg: DictConfig, model: list, optimizer, scheduler, datasets: Datasets | None,
                 layout: dict[str, Any] | None) -> None:
        from megatron.core import parallel_state
        from megatron.core.pipeline_parallel import get_forward_backward_func

        self.cfg, self.model, self.optimizer, self.scheduler = cfg, model, optimizer, scheduler
        self.datasets, self.layout = datasets, layout
        self.hooks = ForwardHooks()
        self.forward_backward_func = get_forward_backward_func()
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.dp_size = parallel_state.get_data_parallel_world_size()
        t = cfg.train
        self.micro_batch_size = t.micro_batch_size
        self.global_batch_size = t.global_batch_size
        self.num_microbatches = self.global_batch_size // (self.micro_batch_size * self.dp_size)
        self.eval_batch_size, self.eval_microbatches = self.global_batch_size, self.num_microbatches
        self.seq_length = cfg.model.seq_length
        self._params_synced = ParamsSynced(model, fast_path_for(cfg).overlap_param_gather)
        self.writer = ckpt.CheckpointWriter(cfg, cfg, async_save=cfg.checkpoint.async_save)
        self._grad_norm: tuple[bool, float | None] | None = None   # (found inf/nan, global norm)

    def set_global_batch_size(self, global_batch_size: int) -> None:
        self.global_batch_size = global_batch_size
        self.num_microbatches = global_batch_size // (self.micro_batch_size * self.dp_size)

    def _iterators(self, dataset, consumed: int, num_microbatches: int) -> list[Iterator]:
        # Each virtual stage's chunk consumes the same microbatch sequence.
        return [microbatches(dataset, consumed, self.micro_batch_size, num_microbatches,
                             self.dp_rank, self.dp_size) for _ in self.model]

    def _run_schedule(self, forward, dataset, consumed: int, forward_only: bool,
                      num_microbatches: int | None = None) -> list[dict]:
        num_microbatches = num_microbatches or self.num_microbatches
        return self.forward_backward_func(
            forward_step_func=forward, data_iterator=self._iterators(dataset, consumed, num_microbatches),
            model=self.model, num_microbatches=num_microbatches, seq_length=self.seq_length,
            micro_batch_size=self.micro_batch_size, forward_only=forward_only)

    def forward_backward(self, consumed_samples: int) -> float:
        for chunk in self.model:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        self._grad_norm = None
        losses = self._run_schedule(partial(forward_step, hooks=self.hooks), Wrapping(self.datasets.train),
                                    consumed_samples, forward_only=False)
        return reduce_losses(losses)

    def grad_norm(self) -> float | None:
        if self._grad_norm is None:  # once per step: unscale/copy the grads, then one global norm
            found_inf = self.optimizer.prepare_grads()
            norm = None if found_inf else self.optimizer.get_grad_norm()
            self._grad_norm = (found_inf, float(norm) if norm is not None else None)
        found_inf, norm = self._grad_norm
        return float("nan") if found_inf else norm

    def optimizer_step(self) -> tuple[bool, float]:
        if self._grad_norm is None:
            updated, grad_norm, _ = self.optimizer.step()
        else:  # spike detection measured the norm already: clip with it, never compute it twice
            updated, grad_norm = step_with_grad_norm(self.optimizer, *self._grad_norm)
        if updated:
            self.scheduler.step(increment=1)
        return updated, float(grad_norm) if grad_norm is not None else float("nan")

    def discard_update(self) -> None:
        """Nothing to undo: the gradient buffers are zeroed at the start of the next step."""

    @torch.no_grad()
    def evaluate(self, iterations: int) -> float:
        with self.params_synced():
            for chunk in self.model:
                chunk.eval()
            losses: list[dict] = []
            # the same held-out batches at every evaluation, whatever the training batch is now
            for i in range(iterations):
                losses += self._run_schedule(forward_step, self.datasets.valid, i * self.eval_batch_size,
                                             forward_only=True, num_microbatches=self.eval_microbatches)
            for chunk in self.model:
                chunk.train()
        return reduce_losses(losses)

    def score_heldout(self, evaluator) -> dict:
        with self.params_synced():
            return evaluator.evaluate(self.forward_backward_func, self.model, forward_step)

    def params_synced(self) -> AbstractContextManager:
        return self._params_synced

    # checkpoints ------------------------------------------------------------------
    def save(self, progress: TrainProgress) -> Path:
        with self.params_synced():
            return self.writer.save(self.model, self.optimizer, self.scheduler, progress)

    def poll_saves(self) -> None:
        self.writer.poll()

    def wait_for_saves(self) -> None:
        self.writer.wait()

    def close(self) -> None:
        self.writer.close()

    def load(self, path: Path) -> TrainProgress:
        """Verified first (integrity.json): a rollback into a damaged checkpoint raises naming the file."""
        return load_with_configured_lrs(path, self.model, self.optimizer, self.scheduler, self.cfg)

    def list_checkpoints(self) -> list[Path]:
        return ckpt.list_checkpoints(self.cfg.run_dir)

    def checkpoints_root(self) -> Path:
        return ckpt.checkpoints_root(self.cfg.run_dir)

    def mark_latest(self, iteration: int) -> None:
        ckpt.write_latest_marker(self.cfg.run_dir, iteration)


def load_with_configured_lrs(path: Path, model: list, optimizer, scheduler, cfg: DictConfig) -> TrainProgress:
    """Every load of a training checkpoint: its state, the config's group LRs (optim.restore_group_lrs)."""
    configured = group_lrs(optimizer)
    progress = ckpt.load_checkpoint(path, model, optimizer, scheduler, cfg)
    restore_group_lrs(optimizer, scheduler, configured)
    return progress


def build_megatron_model(cfg: DictConfig, check_for_nan_in_grad: bool, initialize: bool = True):
    """(model chunks, optimizer, scheduler, layout): everything of the step but the data."""
    from pretrain.train.optim import build_optimizer, build_scheduler, describe_optimizer

    model = build_model_chunks(cfg, check_for_nan_in_grad, initialize)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    wire_schedule_hooks(model, optimizer, cfg)
    layout = describe_optimizer(model, optimizer)  # collective; rank 0 logs it on the start row
    layout["fast_path"] = in_use(model, optimizer)  # spec, attention, fusions, optimizer class actually built
    return model, optimizer, scheduler, layout


def build_megatron_step(cfg: DictConfig, manifest: dict, spike_recovery_on: bool):
    """(step, progress, resumed): model, optimizer, the checkpoint to resume, data.

    The process groups exist already (``setup.init_distributed``, called by the run first so
    that a grown stage can grow its checkpoint in between: ``pretrain.train.growth_start``)."""
    from megatron.core.num_microbatches_calculator import init_num_microbatches_calculator, \
        unset_num_microbatches_calculator

    from pretrain.data import build_datasets
    from pretrain.config.resolve import resolve_load_dir

    load_dir = resolve_load_dir(cfg)
    rank = dist.get_rank()
    run_dir = Path(cfg.run_dir)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    unset_num_microbatches_calculator()
    # train.rampup_batch_size: megatron's ramp [start, increment, samples] (BatchSchedule updates it)
    rampup = list(cfg.train.rampup_batch_size) if cfg.train.rampup_batch_size else None
    init_num_microbatches_calculator(rank, rampup, cfg.train.global_batch_size,
                                     cfg.train.micro_batch_size, cfg.parallel.data_parallel_size)
    # With spike recovery on, a NaN gradient is a handled event (skip/rollback), not a crash.
    model, optimizer, scheduler, layout = build_megatron_model(
        cfg, check_for_nan_in_grad=not spike_recovery_on, initialize=load_dir is None)
    progress = TrainProgress()
    if load_dir is not None:
        # load=auto: a checkpoint with a damaged file is moved aside and the previous one loaded
        progress, load_dir = ckpt.resume_with_fallback(
            run_dir, ckpt.checkpoints_root(run_dir), load_dir, auto=cfg.checkpoint.load == "auto",
            load=lambda path: load_with_configured_lrs(path, model, optimizer, scheduler, cfg))
        if rank == 0:
            print(f"resumed from {load_dir} at step {progress.iteration} "
                  f"({progress.consumed_samples} samples consumed)", flush=True)
    datasets = build_datasets(cfg, manifest, run_dir / "data_cache")
    return MegatronStep(cfg, model, optimizer, scheduler, datasets, layout), progress, load_dir is not None
