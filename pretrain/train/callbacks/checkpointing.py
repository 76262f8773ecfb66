"""Saves every ``checkpoint.save_interval`` steps and at the end; callback state rides along.

The ``checkpoint`` event in metrics.jsonl means "this checkpoint is complete on disk": a
synchronous save (DeepSpeed, ``checkpoint.async_save=false``) logs it when ``save`` returns; an
async save logs it once the backend's writer has finalised it (run_config.yaml written, the
``latest`` marker moved), which the callback learns from the writer's list of finished
iterations after each ``poll_saves`` / ``wait_for_saves``.
"""

from __future__ import annotations

from pathlib import Path
from pretrain.train.callback import Callback, StepOutcome, TrainerView
from pretrain.train.callbacks.metrics import Metrics


def save_accounting(step, iteration: int) -> dict:
    """The save's I/O and memory figures (rank 0; pretrain/checkpoint_accounting.py), if the
    backend's writer measured them: they ride on the ``checkpoint`` row."""
    accounting = getattr(getattr(step, "writer", None), "accounting", None)
    return dict(accounting.get(iteration, {})) if isinstance(accounting, dict) else {}


def finished_saves(step) -> list[int] | None:
    """Iterations whose save the backend has finalised, or None for a backend whose ``save``
    returns only once the checkpoint is complete (no writer with a ``saved`` list)."""
    writer = getattr(step, "writer", None)
    if writer is None or not getattr(writer, "async_save", False):
        return None
    saved = getattr(writer, "saved", None)
    return saved if isinstance(saved, list) else None


class Checkpointing(Callback):
    def __init__(self, save_interval: int, metrics: Metrics, resumed: bool) -> None:
        self.save_interval, self.metrics = save_interval, metrics
        self.last_saved: int | None = None
        self._resumed = resumed
        # iteration -> (path, len(writer.saved) when scheduled: a re-save of the same iteration
        # after a rollback must not be taken for done by the first save's entry)
        self._pending: dict[int, tuple[Path, int]] = {}

    def on_start(self, trainer: TrainerView) -> None:
        self.last_saved = trainer.progress.iteration if self._resumed else -1

    def save(self, trainer: TrainerView, log_event: bool = True) -> Path:
        progress = trainer.progress
        progress.trainer_state = trainer.callback_state()
        done = finished_saves(trainer.step)
        before = len(done) if done is not None else 0
        path = trainer.step.save(progress)
        self.last_saved = progress.iteration
        if log_event:
            if done is None:  # synchronous: complete on disk now
                self.metrics.event("checkpoint", progress.iteration, path=str(path),
                                   **save_accounting(trainer.step, progress.iteration))
            else:
                self._pending[progress.iteration] = (path, before)
                self.log_finished(trainer)
        return path

    def log_finished(self, trainer: TrainerView) -> None:
        """Log the ``checkpoint`` event of every pending save the writer has finalised."""
        done = finished_saves(trainer.step)
        if not self._pending or done is None:
            return
        for iteration, (path, since) in sorted(self._pending.items()):
            if iteration in done[since:]:
                del self._pending[iteration]
                self.metrics.event("checkpoint", iteration, path=str(path),
                                   completed_at_step=trainer.progress.iteration,
                                   **save_accounting(trainer.step, iteration))

    def wait_and_close(self, trainer: TrainerView) -> None:
        """Finish every save in flight, log their events, release the writer."""
        trainer.step.wait_for_saves()
        self.log_finished(trainer)
        trainer.step.close()

    def restored(self, iteration: int) -> None:
        """A rollback loaded the checkpoint of ``iteration``: that state is on disk."""
        self.last_saved = iteration

    def after_step(self, trainer: TrainerView, outcome: StepOutcome) -> None:
        if not outcome.completed:
            return
        trainer.step.poll_saves()
        self.log_finished(trainer)
        iteration = trainer.progress.iteration
        if (self.save_interval and iteration % self.save_interval == 0) or iteration == trainer.train_iters:
            self.save(trainer)

    def on_end(self, trainer: TrainerView) -> None:
        if self.last_saved != trainer.progress.iteration:
            self.save(trainer, log_event=False)
        self.wait_and_close(trainer)
