"""The global batch per step: megatron-core's batch-size ramp-up and per-stage batch sizes.

Before each step the batch is ``pretrain.train.stages.global_batch_at(step, consumed)``: the
stage's ``global_batch_size`` when it sets one, else megatron's ramp
(``train.rampup_batch_size = [start, increment, ramp samples]``, a function of consumed
samples, kept in megatron's num-microbatches calculator too), else ``train.global_batch_size``.
Everything it depends on is in the checkpoint (step, consumed samples), so a run resumed in
the middle of the ramp continues with the same batches. During the ramp the LR is scaled by
``(batch / train.global_batch_size) ** p`` (``train.rampup_lr_scaling``: none p=0, sqrt
p=1/2, linear p=1; docs/pretrain.md states the rule).
"""

from __future__ import annotations

from omegaconf import DictConfig

from pretrain.train.callback import Callback, TrainerView
from pretrain.train.stages import RAMPUP_LR_SCALING, Stage, global_batch_at, rampup_from, stage_at


class BatchSchedule(Callback):
    def __init__(self, cfg: DictConfig, stages: list[Stage]) -> None:
        self.cfg, self.stages = cfg, stages
        self.target = int(cfg.train.global_batch_size)
        self.power = RAMPUP_LR_SCALING[cfg.train.rampup_lr_scaling]
        self.ramp = rampup_from(cfg)
        self.batch = self.target
        self.ramping = False

    def before_step(self, trainer: TrainerView, step: int) -> None:
        consumed = trainer.progress.consumed_samples
        if self.ramp is not None:
            from megatron.core.num_microbatches_calculator import update_num_microbatches

            update_num_microbatches(consumed, consistency_check=True)  # megatron's own view agrees
        self.batch = global_batch_at(self.cfg, self.stages, step, consumed)
        stage = stage_at(self.stages, step)
        self.ramping = self.ramp is not None and (stage is None or stage.global_batch_size is None) \
            and self.batch < self.target
        if self.batch != trainer.global_batch_size:
            trainer.set_global_batch_size(self.batch)

    def lr_factor(self, step: int) -> float:
        if not self.ramping or self.power == 0.0:
            return 1.0
        return (self.batch / self.target) ** self.power
