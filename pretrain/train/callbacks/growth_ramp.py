"""MSG growth (docs/growth.md): the masks' value m is a function of the iteration, set before
every step, so a run resumed mid-ramp continues exactly.

At the first step of a freshly grown stage the callback also scores the held-out set with the
grown model at m = 0 and logs it as a ``growth`` row: the previous stage's final ``heldout``
row is the old model on the same documents, so the two rows show whether growth preserved the
function (the loss at growth equals the old model's) on real data, not only in unit tests. When
this launch grew the checkpoint itself (pretrain.train.growth_start), the row also carries
``grown_here``: world size, TP/PP, streaming, per-rank bytes read and written, wall time.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from pretrain.eval.heldout import HeldoutEvaluator
from pretrain.growth.masked import growth_block, ramp_for, set_ramp
from pretrain.train.callback import Callback, TrainerView
from pretrain.train.callbacks.metrics import Metrics


class GrowthRamp(Callback):
    def __init__(self, cfg: DictConfig, heldout: HeldoutEvaluator | None = None,
                 metrics: Metrics | None = None, grown_here: dict[str, Any] | None = None) -> None:
        self.cfg, self.heldout, self.metrics = cfg, heldout, metrics
        self.grown_here = grown_here  # pretrain.train.growth_start's report when this launch grew
        self.start_iteration = int(growth_block(cfg).start_iteration)
        self.scored = False   # once per process: a rollback to the growth checkpoint does not log it twice

    def before_step(self, trainer: TrainerView, step: int) -> None:
        iteration = trainer.progress.iteration
        ramp = ramp_for(self.cfg, iteration)
        set_ramp(trainer.step.model, ramp)
        # only a stage that starts at its growth (a resume starts later): the metrics row exists once
        if iteration == self.start_iteration and step == iteration + 1 and not self.scored \
                and self.heldout is not None and self.metrics is not None and not self.heldout.empty:
            self.scored = True
            results = trainer.step.score_heldout(self.heldout)
            extra = {"grown_here": self.grown_here} if self.grown_here is not None else {}
            self.metrics.event("growth", iteration, ramp=ramp, **extra, **results)
