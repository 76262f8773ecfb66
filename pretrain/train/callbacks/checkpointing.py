"""Saves every ``checkpoint.save_interval`` steps and at the end; callback state rides along."""

from __future__ import annotations

from pathlib import Path
from pretrain.train.callback import Callback, StepOutcome, TrainerView
from pretrain.train.callbacks.metrics import Metrics



class Checkpointing(Callback):
    def __init__(self, save_interval: int, metrics: Metrics, resumed: bool) -> None:
        self.save_interval, self.metrics = save_interval, metrics
        self.last_saved: int | None = None
        self._resumed = resumed

    def on_start(self, trainer: TrainerView) -> None:
        self.last_saved = trainer.progress.iteration if self._resumed else -1

    def save(self, trainer: TrainerView, log_event: bool = True) -> Path:
        progress = trainer.progress
        progress.trainer_state = trainer.callback_state()
        path = trainer.step.save(progress)
        self.last_saved = progress.iteration
        if log_event:
            self.metrics.event("checkpoint", progress.iteration, path=str(path))
        return path

    def restored(self, iteration: int) -> None:
        """A rollback loaded the checkpoint of ``iteration``: that state is on disk."""
        self.last_saved = iteration

    def after_step(self, trainer: TrainerView, outcome: StepOutcome) -> None:
        if not outcome.completed:
            return
        trainer.step.poll_saves()
        iteration = trainer.progress.iteration
        if (self.save_interval and iteration % self.save_interval == 0) or iteration == trainer.train_iters:
            self.save(trainer)

    def on_end(self, trainer: TrainerView) -> None:
        if self.last_saved != trainer.progress.iteration:
            self.save(trainer, log_event=False)
        trainer.step.close()
