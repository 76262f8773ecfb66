"""One training run: resolve and validate the config, build the backend's step, attach the
features as callbacks, run the loop. One call per process (torchrun starts them all)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from pretrain.cpu_shims import activate_cpu_shims
from pretrain.data import base_weights, read_manifest
from pretrain.mixture import MixtureStream
from pretrain.eval.heldout import HeldoutEvaluator
from pretrain.config.resolve import resolve_config, resolve_load_dir
from pretrain.train.spike_policy import spike_config_from
from pretrain.train.callback import Callback
from pretrain.train.callbacks.batch_schedule import BatchSchedule
from pretrain.train.callbacks.checkpointing import Checkpointing
from pretrain.train.callbacks.data_mixture import DataMixture
from pretrain.train.callbacks.evaluation import HeldoutBPB, ValidLoss
from pretrain.train.callbacks.fault_injection import FaultInjection, fault_from
from pretrain.train.callbacks.growth_ramp import GrowthRamp
from pretrain.train.callbacks.hang_watchdog import HangWatchdog, HangWatchdogCallback, watchdog_from
from pretrain.train.callbacks.metrics import Metrics
from pretrain.train.callbacks.rank_faults import rank_faults_from
from pretrain.train.callbacks.save_and_requeue import SaveAndRequeueOnSignal
from pretrain.train.callbacks.spike_log import SpikeLog
from pretrain.train.callbacks.spike_recovery import SpikeRecovery
from pretrain.train.callbacks.stragglers import StragglerReport
from pretrain.train.callbacks.z_loss import ZLoss
from pretrain.train.loop import Trainer
from pretrain.train.stages import stages_from
from pretrain.train.setup import flops_per_token, peak_tflops, world_size_from_env
from pretrain.config.validate import validate


def build_callbacks(cfg: DictConfig, manifest: dict, resumed: bool, has_valid: bool,
                    train_stream: MixtureStream, watchdog: HangWatchdog | None = None,
                    grown_here: dict[str, Any] | None = None) -> tuple[list[Callback], Metrics]:
    """The features, in the order their ``after_step`` runs (``on_end`` runs in reverse).
    ``grown_here``: the growth report when this launch grew its checkpoint (growth_start)."""
    from pretrain.growth.masked import growth_block

    t = cfg.train
    metrics = Metrics(cfg, flops_per_token(cfg), peak_tflops())
    spike_log = SpikeLog(cfg.run_dir, dist.get_rank(), metrics)
    checkpointing = Checkpointing(cfg.checkpoint.save_interval, metrics, resumed)
    stages = stages_from(cfg)
    buckets = OmegaConf.to_container(t.heldout_position_buckets) if t.heldout_position_buckets else None
    heldout = HeldoutEvaluator(manifest, cfg.model.seq_length, t.micro_batch_size, t.heldout_max_documents,
                               buckets)
    weights = OmegaConf.to_container(cfg.data.weights) if cfg.data.weights else None
    # first: the batch size and the mixture of a step are settled before anything else looks at it
    # the watchdog's after_step first: evaluation and saves below run under train.fault.slow_timeout_s
    callbacks: list[Callback] = [HangWatchdogCallback(watchdog)] if watchdog is not None else []
    callbacks += [BatchSchedule(cfg, stages),
                  DataMixture(train_stream, stages, base_weights(manifest, weights), metrics)]
    rank_faults = rank_faults_from(cfg, dist.get_rank())
    if rank_faults is not None:   # test-only (docs/fault_tolerance.md)
        callbacks.append(rank_faults)
    if growth_block(cfg) is not None:
        callbacks.append(GrowthRamp(cfg, heldout, metrics, grown_here))  # m per step; held-out at m = 0
    kind, step = fault_from(cfg)
    if kind != "none":
        callbacks.append(FaultInjection(kind, step, spike_log))
    callbacks.append(SpikeRecovery(spike_config_from(cfg), cfg, spike_log, checkpointing))
    if t.z_loss > 0:
        callbacks.append(ZLoss(t.z_loss))
    callbacks.append(metrics)
    if t.fault.straggler_interval and dist.get_world_size() > 1:
        callbacks.append(StragglerReport(t.fault.straggler_interval, t.fault.straggler_factor, metrics))
    if has_valid and t.eval_interval:
        callbacks.append(ValidLoss(t.eval_interval, t.eval_iters, metrics))
    callbacks += [HeldoutBPB(heldout, t.bpb_interval, metrics, Path(cfg.run_dir)),
                  checkpointing, SaveAndRequeueOnSignal(checkpointing)]
    return callbacks, metrics


def run(cfg: DictConfig) -> dict[str, Any] | None:
    """Train per ``cfg``; returns the summary on global rank 0 (None elsewhere)."""
    activate_cpu_shims()
    # megatron logs every dataset index build at INFO; keep the console for the run itself.
    logging.getLogger("megatron").setLevel(logging.WARNING)
    manifest = read_manifest(cfg.data.path)
    deepspeed = cfg.backend == "deepspeed"
    cfg = resolve_config(cfg, manifest, None if deepspeed else resolve_load_dir(cfg))
    validate(cfg, world_size_from_env(), manifest)
    spike_config = spike_config_from(cfg)
    # before the process group and the model: a hang while loading is caught (slow_timeout_s) too
    watchdog = watchdog_from(cfg)
    try:
        return _train(cfg, manifest, deepspeed, spike_config.enabled, watchdog)
    finally:
        if watchdog is not None:
            watchdog.stop()


def _train(cfg: DictConfig, manifest: dict, deepspeed: bool, spikes_enabled: bool,
           watchdog: HangWatchdog | None) -> dict[str, Any] | None:
    grown_here = None
    if deepspeed:
        from pretrain.data import build_datasets
        from pretrain.train.deepspeed_step import build_deepspeed_step

        step, progress, resumed = build_deepspeed_step(cfg)
        step.datasets = build_datasets(cfg, manifest, Path(cfg.run_dir) / "data_cache")
    else:
        from pretrain.train.growth_start import grow_at_start
        from pretrain.train.megatron_step import build_megatron_step
        from pretrain.train.setup import init_distributed

        init_distributed(cfg)
        # a grown stage's first launch grows its checkpoint here, on this stage's ranks (streaming)
        cfg, grown_here = grow_at_start(cfg, watchdog)
        step, progress, resumed = build_megatron_step(cfg, manifest, spikes_enabled)
    callbacks, metrics = build_callbacks(cfg, manifest, resumed, step.datasets.valid is not None,
                                         step.datasets.train, watchdog, grown_here)
    trainer = Trainer(step, progress, callbacks, cfg.train.train_iters, cfg.train.global_batch_size,
                      cfg.model.seq_length)
    trainer.load_callback_state(progress.trainer_state)
    trainer.fit()
    dist.barrier()
    return metrics.summary
