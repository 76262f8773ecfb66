"""MSG growth (docs/growth.md): the masks' value m is a function of the iteration, set before
every step, so a run resumed mid-ramp continues exactly."""

from __future__ import annotations

from omegaconf import DictConfig

from pretrain.growth.masked import ramp_for, set_ramp
from pretrain.train.callback import Callback, TrainerView



class GrowthRamp(Callback):
    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    def before_step(self, trainer: TrainerView, step: int) -> None:
        set_ramp(trainer.step.model, ramp_for(self.cfg, trainer.progress.iteration))
