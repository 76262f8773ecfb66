"""The one interface every loop feature attaches through (OLMo-core's callbacks, cut to our hooks).

A step, seen from a callback::

    before_step(step)                      data position, masks, faults for this step
    lr_factor(step)                        multiplied together; the loop applies the product
    -- forward and backward --
    local_flags(step, loss)                -> {name: bool}; the loop agrees them in ONE all-reduce
                                           and every rank reads the result as trainer.flags
    before_optimizer_step(step, loss)      -> Decision: continue, skip, roll back, stop
    -- the update (only on CONTINUE) --
    after_step(outcome)                    metrics, evaluation, checkpoints, recovery

``on_start`` runs once the model, optimizer and checkpoint are in place;
``on_end`` runs after the last step, in reverse order of the list (teardown
mirrors set-up: the final checkpoint and held-out scores come before the
metrics callback, earlier in the list, closes the run). ``state_key`` names the
callback's entry in the checkpoint's trainer state, so a resumed run continues
with the same detector windows, skipped ranges and flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from pretrain.checkpoint import TrainProgress
from pretrain.train.backend import TrainStep


class TrainerView(Protocol):
    """What a callback sees of the loop (:class:`pretrain.train.loop.Trainer` is one)."""

    step: TrainStep
    progress: TrainProgress
    train_iters: int
    global_batch_size: int
    tokens_per_step: int
    flags: dict[str, bool]   # this step's agreed flags: raised on any rank -> True on every rank

    def callback_state(self) -> dict[str, Any]: ...

    def set_global_batch_size(self, global_batch_size: int) -> None: ...


class Decision(str, Enum):
    """What happens to a step's gradients; the first callback that does not say CONTINUE wins."""

    CONTINUE = "continue"   # apply the update
    SKIP = "skip"           # drop the update; the deciding callback moves the data position
    ROLLBACK = "rollback"   # drop the update; the deciding callback restores a checkpoint
    STOP = "stop"           # drop the update; the deciding callback raises


@dataclass
class StepOutcome:
    step: int               # 1-based iteration this step trained (or tried to)
    loss: float             # mean token loss of the global batch
    grad_norm: float        # global norm before clipping (nan when unknown or non-finite)
    lr: float               # the LR of train.lr's group this step used
    updated: bool           # the optimizer applied an update
    decision: Decision
    step_time_s: float
    decided_by: "Callback | None" = None

    @property
    def completed(self) -> bool:
        """The step counts: progress advanced and it is logged."""
        return self.decision is Decision.CONTINUE


class Callback:
    """Base class: every hook does nothing."""

    state_key: str | None = None

    def on_start(self, trainer: TrainerView) -> None: ...

    def before_step(self, trainer: TrainerView, step: int) -> None: ...

    def lr_factor(self, step: int) -> float:
        return 1.0

    def local_flags(self, trainer: TrainerView, step: int, loss: float) -> dict[str, bool]:
        """Conditions this rank sees that every rank must act on; the same names on every rank."""
        return {}

    def before_optimizer_step(self, trainer: TrainerView, step: int, loss: float) -> Decision:
        return Decision.CONTINUE

    def after_step(self, trainer: TrainerView, outcome: StepOutcome) -> None: ...

    def on_end(self, trainer: TrainerView) -> None: ...

    def state_dict(self) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: dict[str, Any] | None) -> None: ...
