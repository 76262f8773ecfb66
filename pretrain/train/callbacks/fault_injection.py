"""``train.fault``: break one step on purpose (docs/spikes.md), to prove recovery works.

Kinds: ``nan`` (the step's token losses become NaN), ``lr_spike`` (the step runs
at 1000x the LR), ``corrupt_batch`` (garbage tokens and targets, the same on
every rank). The fault fires once per run; the flag is checkpointed, so a
resume does not fire it again.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from pretrain.train.callback import Callback, StepOutcome, TrainerView
from pretrain.train.callbacks.spike_log import SpikeLog
from pretrain.train.forward import Batch


FAULT_KINDS = ("none", "nan", "lr_spike", "corrupt_batch")
LR_SPIKE_FACTOR = 1000.0


def fault_from(cfg: DictConfig) -> tuple[str, int]:
    kind = cfg.train.fault.kind
    if kind not in FAULT_KINDS:
        raise ValueError(f"train.fault.kind: {kind!r} is not one of {FAULT_KINDS}")
    return kind, cfg.train.fault.step


def nan_losses(losses: torch.Tensor) -> torch.Tensor:
    return losses * float("nan")


def corrupt_batch(batch: Batch) -> Batch:
    gen = torch.Generator().manual_seed(0)
    for key in ("tokens", "labels"):
        batch[key] = torch.randint(3, 64, batch[key].shape, generator=gen).to(batch[key])
    return batch


class FaultInjection(Callback):
    state_key = "fault"

    def __init__(self, kind: str, step: int, log: SpikeLog) -> None:
        self.kind, self.step, self.log = kind, step, log
        self.fired = False
        self.armed = False

    def state_dict(self) -> dict[str, Any]:
        return {"fired": self.fired}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.fired = bool((state or {}).get("fired", False))

    def before_step(self, trainer: TrainerView, step: int) -> None:
        self.armed = not self.fired and step == self.step
        if not self.armed:
            return
        self.fired = True
        hooks = trainer.step.hooks
        if self.kind == "nan":
            hooks.token_losses.append(nan_losses)
        elif self.kind == "corrupt_batch":
            hooks.batch.append(corrupt_batch)

    def lr_factor(self, step: int) -> float:
        return LR_SPIKE_FACTOR if self.armed and self.kind == "lr_spike" else 1.0

    def after_step(self, trainer: TrainerView, outcome: StepOutcome) -> None:
        if not self.armed:
            return
        self.armed = False
        hooks = trainer.step.hooks
        hooks.token_losses[:] = [f for f in hooks.token_losses if f is not nan_losses]
        hooks.batch[:] = [f for f in hooks.batch if f is not corrupt_batch]
        self.log.event("fault", outcome.step, kind=self.kind, loss=outcome.loss, grad_norm=outcome.grad_norm)
