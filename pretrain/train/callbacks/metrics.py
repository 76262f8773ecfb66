"""metrics.jsonl, W&B, the progress bar and the summary, from the loop's outcomes (rank 0 writes)."""

from __future__ import annotations

import time
from typing import Any

import torch.distributed as dist
from omegaconf import DictConfig

from pretrain.tools.flops import mfu
from pretrain.train.monitor import RunMonitor, memory_gb
from pretrain.train.callback import Callback, StepOutcome, TrainerView



class Metrics(Callback):
    """Owns the run's :class:`RunMonitor`; other callbacks report their events through it."""

    def __init__(self, cfg: DictConfig, flops_per_token: float | None, peak_tflops: float | None) -> None:
        self.cfg, self.fpt, self.peak = cfg, flops_per_token, peak_tflops
        self.monitor: RunMonitor | None = None
        self.summary: dict[str, Any] | None = None
        self.world = 1
        self.wall_start = time.time()

    def on_start(self, trainer: TrainerView) -> None:
        self.world = dist.get_world_size()
        self.wall_start = time.time()
        if dist.get_rank() == 0:
            # lr_groups: each param group's peak/floor LR as the run uses them (after any load)
            lr_groups = [[g.get("max_lr"), g.get("min_lr")] for g in trainer.step.optimizer.param_groups]
            self.monitor = RunMonitor(self.cfg, self.cfg, trainer.progress.iteration, trainer.train_iters,
                                      {**(trainer.step.layout or {}), "lr_groups": lr_groups})

    def after_step(self, trainer: TrainerView, outcome: StepOutcome) -> None:
        if self.monitor is None or not outcome.completed:
            return
        progress = trainer.progress
        tokens_per_s = trainer.tokens_per_step / outcome.step_time_s
        per_gpu = tokens_per_s / self.world
        self.monitor.log_step({
            "step": progress.iteration, "loss": outcome.loss, "grad_norm": outcome.grad_norm,
            "lr": outcome.lr, "tokens_per_s": tokens_per_s,
            "consumed_samples": progress.consumed_samples, "tokens": progress.tokens,
            "global_batch_size": trainer.global_batch_size,
            "tflops_per_gpu": self.fpt * per_gpu / 1e12 if self.fpt else None,
            "mfu": mfu(per_gpu, self.fpt, self.peak) if self.peak and self.fpt else None,
            "mem_gb": memory_gb(), "step_time_s": outcome.step_time_s, "skipped": not outcome.updated,
            "elapsed_s": time.time() - self.wall_start,
        })

    def event(self, name: str, step: int, **fields: Any) -> None:
        if self.monitor is not None:
            self.monitor.event(name, step, **fields)

    def wandb_log(self, values: dict[str, Any], step: int | None = None) -> None:
        """``values`` without the None ones; ``step``: the W&B step (None: W&B's own counter)."""
        if self.monitor is not None and self.monitor.wandb is not None:
            values = {k: v for k, v in values.items() if v is not None}
            if step is None:
                self.monitor.wandb.log(values)
            else:
                self.monitor.wandb.log(values, step=step)

    def log_eval(self, step: int, loss: float) -> None:
        if self.monitor is not None:
            self.monitor.log_eval(step, loss)

    def log_heldout(self, step: int, results: dict) -> None:
        if self.monitor is not None:
            self.monitor.log_heldout(step, results)

    def on_end(self, trainer: TrainerView) -> None:
        if self.monitor is not None:
            names = [p.name for p in trainer.step.list_checkpoints()]
            self.summary = self.monitor.finish(names, backend=trainer.step.name)
