"""What a backend provides to the loop: one training step and the state it checkpoints.

megatron-core (:mod:`pretrain.train.megatron_step`) and DeepSpeed
(:mod:`pretrain.train.deepspeed_step`) each implement this; the loop and every
callback are written against it only, so a feature added once works on both.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import torch

from pretrain.checkpoint import TrainProgress
from pretrain.train.forward import ForwardHooks


class TrainStep(Protocol):
    name: str
    model: list[torch.nn.Module]      # this rank's model chunks (wrapped as the backend trains them)
    optimizer: Any                    # has ``param_groups``
    scheduler: Any                    # megatron's OptimizerParamScheduler (both backends)
    hooks: ForwardHooks
    layout: dict[str, Any] | None     # precision and optimizer shards for the start row

    def forward_backward(self, consumed_samples: int) -> float:
        """Gradients of the global batch starting at ``consumed_samples``; its mean token loss."""

    def set_global_batch_size(self, global_batch_size: int) -> None:
        """Train the next steps on this many samples (batch ramp-up, a stage's batch size);
        evaluation keeps train.global_batch_size."""

    def grad_norm(self) -> float | None:
        """The global gradient norm before clipping, before the update (None where unavailable)."""

    def optimizer_step(self) -> tuple[bool, float]:
        """Apply the update and advance the LR schedule; (updated, grad norm)."""

    def discard_update(self) -> None:
        """Drop this step's gradients without touching weights or optimizer state."""

    def evaluate(self, iterations: int) -> float:
        """Mean token loss on the valid split's first ``iterations`` global batches."""

    def params_synced(self) -> AbstractContextManager:
        """Weights complete on every rank (overlapped param gathers finished) inside the block."""

    # checkpoints ------------------------------------------------------------------
    def save(self, progress: TrainProgress) -> Path: ...

    def poll_saves(self) -> None: ...

    def wait_for_saves(self) -> None: ...

    def close(self) -> None: ...

    def load(self, path: Path) -> TrainProgress: ...

    def list_checkpoints(self) -> list[Path]:
        """Complete and incomplete ``iter_*`` directories, oldest first."""

    def checkpoints_root(self) -> Path: ...

    def mark_latest(self, iteration: int) -> None: ...
