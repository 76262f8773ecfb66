"""Per-source cursors across weight changes (pretrain/mixture.py): the stage schedule's weights,
applied at the step they start, and the realised schedule kept in every checkpoint.

Before each step the weights of the step's stage (``train.stages``, else ``data.weights`` /
the manifest) are put in effect at the current data position; when they differ from the
ones in effect, a new mixture segment starts there with each source's cursor, so nothing is
read twice or skipped. The segments are this callback's checkpoint state: a resumed run
replays them and reads what the uninterrupted run read; a run resumed with other weights
(a changed config) starts a new segment at the checkpoint's position the same way.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

from pretrain.mixture import MixtureStream
from pretrain.train.callback import Callback, TrainerView
from pretrain.train.stages import Stage, stage_at, weights_at


class DataMixture(Callback):
    state_key = "data_mixture"

    def __init__(self, stream: MixtureStream, stages: list[Stage], base: dict[str, float], metrics) -> None:
        self.stream, self.stages, self.base, self.metrics = stream, stages, base, metrics
        self._progress = None

    def on_start(self, trainer: TrainerView) -> None:
        self._progress = trainer.progress

    def before_step(self, trainer: TrainerView, step: int) -> None:
        at = trainer.progress.consumed_samples
        weights = weights_at(self.stages, step, self.base)
        if self.stream.set_weights(at, weights):
            stage = stage_at(self.stages, step)
            cursors = dict(zip(self.stream.names, self.stream.cursors(at)))
            self.metrics.event("mixture", step, stage=stage.name if stage else None, consumed_samples=at,
                               weights=self.stream.weights_at(at), cursors=cursors)
            if dist.get_rank() == 0:
                print(f"step {step}: mixture {self.stream.weights_at(at)} from sample {at}, "
                      f"per-source cursors {cursors}", flush=True)

    def state_dict(self) -> dict[str, Any] | None:
        at = self._progress.consumed_samples if self._progress is not None else 0
        return self.stream.state_dict(at)

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.stream.load_state_dict(state)
