"""MSG growth (docs/growth.md): the masks' value m is a function of the iteration, set before
every step, so a run resumed mid-ramp continues exactly."""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig

from pretrain.growth.masked import ramp_for, set_ramp
from pretrain.train.callback import Callback

if TYPE_CHECKING:
    from pretrain.train.loop import Trainer


class GrowthRamp(Callback):
    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    def before_step(self, trainer: "Trainer", step: int) -> None:
        set_ramp(trainer.step.model, ramp_for(self.cfg, trainer.progress.iteration))
