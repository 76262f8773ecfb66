"""The training loop: one per run, whatever the backend; every feature is a callback."""

from __future__ import annotations

import time
from typing import Any

import torch

from pretrain.checkpoint import TrainProgress
from pretrain.train.backend import TrainStep
from pretrain.train.callback import Callback, Decision, StepOutcome
from pretrain.train.flags import agree_flags


class Trainer:
    def __init__(self, step: TrainStep, progress: TrainProgress, callbacks: list[Callback],
                 train_iters: int, global_batch_size: int, seq_length: int) -> None:
        self.step, self.progress, self.callbacks = step, progress, callbacks
        self.train_iters, self.global_batch_size = train_iters, global_batch_size
        self.seq_length = seq_length
        self.tokens_per_step = global_batch_size * seq_length
        self._lr_scaled = False
        self.flags: dict[str, bool] = {}

    def fit(self) -> None:
        for callback in self.callbacks:
            callback.on_start(self)
        while self.progress.iteration < self.train_iters:
            step = self.progress.iteration + 1
            for callback in self.callbacks:
                callback.before_step(self, step)
            lr = self._set_lr(step)
            started = time.perf_counter()
            loss = self.step.forward_backward(self.progress.consumed_samples)
            self.flags = agree_flags(self._local_flags(step, loss))
            decision, decided_by = self._decide(step, loss)
            if decision is Decision.CONTINUE:
                updated, grad_norm = self.step.optimizer_step()
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self._advance()
            else:
                self.step.discard_update()
                updated, grad_norm = False, _or_nan(self.step.grad_norm())
            outcome = StepOutcome(step, loss, grad_norm, lr, updated, decision,
                                  time.perf_counter() - started, decided_by)
            for callback in self.callbacks:
                callback.after_step(self, outcome)
        for callback in reversed(self.callbacks):
            callback.on_end(self)

    def _local_flags(self, step: int, loss: float) -> dict[str, bool]:
        flags: dict[str, bool] = {}
        for callback in self.callbacks:
            flags.update(callback.local_flags(self, step, loss))
        return flags

    def set_global_batch_size(self, global_batch_size: int) -> None:
        """From this step on (batch ramp-up, a stage's batch size): the backend's microbatch
        count and what a step adds to consumed samples and tokens."""
        self.global_batch_size = global_batch_size
        self.tokens_per_step = global_batch_size * self.seq_length
        self.step.set_global_batch_size(global_batch_size)

    def _decide(self, step: int, loss: float) -> tuple[Decision, Callback | None]:
        for callback in self.callbacks:
            decision = callback.before_optimizer_step(self, step, loss)
            if decision is not Decision.CONTINUE:
                return decision, callback
        return Decision.CONTINUE, None

    def _advance(self) -> None:
        self.progress.iteration += 1
        self.progress.consumed_samples += self.global_batch_size
        self.progress.tokens += self.tokens_per_step

    def _set_lr(self, step: int) -> float:
        """Scale every group's scheduled LR by the callbacks' factors (μP ratios kept); the
        reference LR (train.lr's group) this step uses."""
        factor = 1.0
        for callback in self.callbacks:
            factor *= callback.lr_factor(step)
        scheduler, optimizer = self.step.scheduler, self.step.optimizer
        if factor != 1.0 or self._lr_scaled:
            scheduler.step(increment=0)       # back to the schedule's values
            for group in optimizer.param_groups:
                group["lr"] *= factor
            self._lr_scaled = factor != 1.0
        try:
            return float(scheduler.get_lr({})) * factor
        except (TypeError, AttributeError):
            return float(optimizer.param_groups[0]["lr"]) * factor

    def callback_state(self) -> dict[str, Any]:
        """What the checkpoint keeps of the callbacks (``TrainProgress.trainer_state``)."""
        return {cb.state_key: cb.state_dict() for cb in self.callbacks if cb.state_key}

    def load_callback_state(self, state: dict[str, Any] | None) -> None:
        for callback in self.callbacks:
            if callback.state_key:
                callback.load_state_dict((state or {}).get(callback.state_key))


def _or_nan(value: float | None) -> float:
    return float(value) if value is not None else float("nan")
