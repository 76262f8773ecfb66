"""Held-out evaluation during training: the valid split's loss, and loss/BPB per language and source."""

from __future__ import annotations

from pathlib import Path

import torch.distributed as dist

from pretrain.eval.heldout import HeldoutEvaluator
from pretrain.eval.positions import plot_positions
from pretrain.train.callback import Callback, StepOutcome, TrainerView
from pretrain.train.callbacks.metrics import Metrics



POSITIONS_PLOT = "heldout_positions.png"


class ValidLoss(Callback):
    """``train.eval_interval``: mean loss over ``train.eval_iters`` batches of the valid split."""

    def __init__(self, interval: int, iterations: int, metrics: Metrics) -> None:
        self.interval, self.iterations, self.metrics = interval, iterations, metrics

    def after_step(self, trainer: TrainerView, outcome: StepOutcome) -> None:
        iteration = trainer.progress.iteration
        if outcome.completed and self.interval and iteration % self.interval == 0:
            self.metrics.log_eval(iteration, trainer.step.evaluate(self.iterations))


class HeldoutBPB(Callback):
    """``train.bpb_interval`` and the end of the run: whole held-out documents by language and
    source (the BPB Tele-FLM publishes, equal to what the exported HF model scores)."""

    def __init__(self, evaluator: HeldoutEvaluator, interval: int, metrics: Metrics,
                 run_dir: Path | None = None) -> None:
        self.evaluator, self.interval, self.metrics = evaluator, interval, metrics
        self.run_dir = run_dir

    def _evaluate(self, trainer: TrainerView) -> dict | None:
        if self.evaluator.empty:
            return None
        results = trainer.step.score_heldout(self.evaluator)
        self.metrics.log_heldout(trainer.progress.iteration, results)
        return results

    def after_step(self, trainer: TrainerView, outcome: StepOutcome) -> None:
        iteration = trainer.progress.iteration
        if outcome.completed and self.interval and iteration % self.interval == 0 \
                and iteration < trainer.train_iters:
            self._evaluate(trainer)

    def on_end(self, trainer: TrainerView) -> None:
        results = self._evaluate(trainer)
        # the final evaluation's loss by position (pretrain.eval.positions): rank 0 draws it
        if results is not None and self.run_dir is not None and dist.get_rank() == 0:
            plot_positions(results, trainer.progress.iteration, self.run_dir / POSITIONS_PLOT)
