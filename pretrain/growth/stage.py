"""Train one grown stage with MSG masks, from the trainer's own parts.

Until the trainer applies growth masks itself (``pretrain/train.py`` builds a
plain model and has no per-step mask hook), grown stages run here: the same
config resolution, validation, process groups, optimizer, scheduler,
checkpoint format, data stream and metrics as ``python -m pretrain`` — only
the model builder is :func:`pretrain.growth.masked.build_masked_model` and
the mask value m is set from the iteration before every step.

    [torchrun ...] python -m pretrain.growth.stage <stage dir>/stage.yaml
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf


def build_chunks(cfg: DictConfig) -> list[torch.nn.Module]:
    """Masked model chunk(s), DDP-wrapped exactly as ``pretrain.train.build_model_chunks`` does."""
    from megatron.core import parallel_state
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from pretrain.growth.masked import build_masked_model

    if cfg.parallel.virtual_pipeline_model_parallel_size:
        raise ValueError("parallel.virtual_pipeline_model_parallel_size: grown stages run without "
                         "interleaved pipelining here")
    chunk = build_masked_model(cfg, pre_process=parallel_state.is_pipeline_first_stage(),
                               post_process=parallel_state.is_pipeline_last_stage())
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=bool(cfg.train.overlap_grad_reduce),
        use_distributed_optimizer=bool(cfg.parallel.use_distributed_optimizer), check_for_nan_in_grad=True)
    model = [DistributedDataParallel(config=chunk.config, ddp_config=ddp_config, module=chunk)]
    model[0].broadcast_params()
    return model


def run_stage(cfg: DictConfig) -> None:
    from megatron.core.num_microbatches_calculator import (init_num_microbatches_calculator,
                                                             unset_num_microbatches_calculator)

    from pretrain import train
    from pretrain.checkpoint import CheckpointWriter, list_checkpoints, load_checkpoint, resolve_load_dir
    from pretrain.cpu_shims import activate_cpu_shims
    from pretrain.data import build_datasets, read_manifest
    from pretrain.growth.masked import ramp_for, set_ramp
    from pretrain.metrics import RunMonitor, memory_gb
    from pretrain.optim import build_optimizer, build_scheduler
    from pretrain.validate import validate

    activate_cpu_shims()
    manifest = read_manifest(cfg.data.path)
    load_dir = resolve_load_dir(cfg)
    if load_dir is None:
        raise FileNotFoundError(f"{cfg.run_dir}: a grown stage starts from its grown checkpoint; none found")
    cfg = train.resolve_config(cfg, manifest, load_dir)
    validate(cfg, train.world_size_from_env(), manifest)
    train.init_distributed(cfg)
    rank = dist.get_rank()
    unset_num_microbatches_calculator()
    init_num_microbatches_calculator(rank, None, int(cfg.train.global_batch_size),
                                     int(cfg.train.micro_batch_size), int(cfg.parallel.data_parallel_size))
    model = build_chunks(cfg)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    train.wire_schedule_hooks(model, optimizer, cfg)
    progress = load_checkpoint(load_dir, model, optimizer, scheduler, cfg)
    datasets = build_datasets(cfg, manifest, Path(cfg.run_dir) / "data_cache")
    trainer = train.Trainer(cfg, model, optimizer, scheduler, datasets)
    writer = CheckpointWriter(cfg, cfg, async_save=False)
    t = cfg.train
    train_iters, tokens_per_step = int(t.train_iters), int(t.global_batch_size) * int(cfg.model.seq_length)
    flops_per_token = train.flops_per_token(cfg)
    monitor = RunMonitor(cfg, cfg, progress.iteration, train_iters) if rank == 0 else None
    save_interval = int(cfg.checkpoint.save_interval or 0)
    eval_interval = int(t.eval_interval or 0) if datasets.valid is not None else 0
    wall_start = time.time()
    while progress.iteration < train_iters:
        ramp = ramp_for(cfg, progress.iteration)
        set_ramp(model, ramp)
        lr = optimizer.param_groups[0]["lr"]
        step_start = time.perf_counter()
        loss, grad_norm, updated = trainer.train_step(progress.consumed_samples)
        step_time = time.perf_counter() - step_start
        progress.iteration += 1
        progress.consumed_samples += int(t.global_batch_size)
        progress.tokens += tokens_per_step
        if monitor is not None:
            monitor.log_step({"step": progress.iteration, "loss": loss, "grad_norm": grad_norm, "lr": lr,
                              "growth_mask": ramp, "tokens_per_s": tokens_per_step / step_time,
                              "tflops_per_gpu": (flops_per_token or 0) * tokens_per_step / step_time
                              / dist.get_world_size() / 1e12, "mfu": None, "mem_gb": memory_gb(),
                              "consumed_samples": progress.consumed_samples, "tokens": progress.tokens,
                              "step_time_s": step_time, "skipped": not updated,
                              "elapsed_s": time.time() - wall_start})
        if eval_interval and progress.iteration % eval_interval == 0:
            eval_loss = trainer.evaluate()
            if monitor is not None:
                monitor.log_eval(progress.iteration, eval_loss)
        if (save_interval and progress.iteration % save_interval == 0) or progress.iteration == train_iters:
            writer.save(model, optimizer, scheduler, progress)
    writer.close()
    if monitor is not None:
        monitor.finish([p.name for p in list_checkpoints(cfg.run_dir)])
    dist.barrier()
    train.shutdown()


if __name__ == "__main__":
    stage_cfg = OmegaConf.load(sys.argv[1])
    stage_cfg.pop("hydra", None)
    run_stage(stage_cfg)
