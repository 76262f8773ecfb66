"""Slurm's early warning (SIGUSR1): save a complete checkpoint, then exit for requeue.

The contract with the launcher is :mod:`pretrain.preemption`; the decision is
agreed across ranks every step (``trainer.flags``), so every rank enters the save together.
"""

from __future__ import annotations

from pretrain.preemption import PreemptionFlag, install_preemption_handler
from pretrain.train.callback import Callback, StepOutcome, TrainerView
from pretrain.train.callbacks.checkpointing import Checkpointing



class SaveAndRequeueOnSignal(Callback):
    def __init__(self, checkpointing: Checkpointing) -> None:
        self.checkpointing = checkpointing
        self.flag: PreemptionFlag | None = None

    def on_start(self, trainer: TrainerView) -> None:
        self.flag = install_preemption_handler()

    def local_flags(self, trainer: TrainerView, step: int, loss: float) -> dict[str, bool]:
        return {"preempt": self.flag.should_save_and_exit()}

    def after_step(self, trainer: TrainerView, outcome: StepOutcome) -> None:
        # agreed in the loop's one flag all-reduce; a signal heard during a dropped step stays set
        if not outcome.completed or not trainer.flags.get("preempt"):
            return
        if self.checkpointing.last_saved != trainer.progress.iteration:
            self.checkpointing.save(trainer)
        self.checkpointing.wait_and_close(trainer)  # the save is complete (and logged) before the exit
        self.flag.exit_for_requeue()
