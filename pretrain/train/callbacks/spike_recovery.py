"""Loss-spike detection and recovery in the loop (the policy itself: :mod:`pretrain.train.spike_policy`).

Before the update the step's loss and gradient norm are judged (the same
verdict on every rank); a flagged step's update is dropped and the planner's
action carried out: skip the batch, roll back to an earlier checkpoint and skip
data, or lower the LR for a while; past the recovery budget the run stops.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.distributed as dist
from omegaconf import DictConfig

from pretrain.config.schema import typed
from pretrain.train.spike_policy import (Action, RecoveryPlanner, Signal, SpikeConfig, SpikeDetector, SpikeStop, Verdict,
                             load_skip_ranges)
from pretrain.train.callback import Callback, Decision, StepOutcome, TrainerView
from pretrain.train.callbacks.checkpointing import Checkpointing
from pretrain.train.callbacks.spike_log import SpikeLog


DECISION_OF = {Action.SKIP_UPDATE: Decision.SKIP, Action.LOWER_LR: Decision.SKIP,
               Action.ROLLBACK: Decision.ROLLBACK, Action.STOP: Decision.STOP}


def rollback_target(checkpoints: list[Path], spike_step: int, before: int) -> tuple[Path | None, str]:
    """The newest checkpoint at least ``before`` steps before the spike, else the oldest kept one."""
    found = [(int(p.name.split("_")[-1]), p) for p in checkpoints]
    found = [(i, p) for i, p in found if i < spike_step]
    if not found:
        return None, "no checkpoint before the spike"
    good = [(i, p) for i, p in found if i <= spike_step - before]
    if good:
        return good[-1][1], f"newest checkpoint at least {before} steps before the spike"
    return found[0][1], f"no checkpoint {before} steps before the spike: the oldest kept one"


class SpikeRecovery(Callback):
    state_key = "spikes"

    def __init__(self, config: SpikeConfig, cfg: DictConfig, log: SpikeLog, checkpointing: Checkpointing) -> None:
        self.config, self.log, self.checkpointing = config, log, checkpointing
        self.run_dir = Path(cfg.run_dir)
        self.seq_length = cfg.model.seq_length
        self.detector = SpikeDetector(config)
        self.planner = RecoveryPlanner(config)
        self.replay = load_skip_ranges(typed(cfg, strict=False).train.spikes.replay_skips)
        self.skipped: list[list[int]] = []     # [start, end) sample ranges this run never trained on
        self.lr_scale_until = 0                # steps < this (1-based iteration) run at lr_factor
        self.recoveries = 0
        self.flagged: tuple[Verdict, Action] | None = None
        self._observed: tuple[float | None, Verdict] | None = None   # this step's (grad norm, verdict)

    # -- state carried in checkpoints ------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"detector": self.detector.state_dict(), "planner": self.planner.state_dict(),
                "skipped": [list(r) for r in self.skipped], "lr_scale_until": self.lr_scale_until,
                "recoveries": self.recoveries}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if not state:
            return
        self.detector = SpikeDetector(self.config)
        self.detector.load_state_dict(state.get("detector", {}))
        self.planner.load_state_dict(state.get("planner", {}))
        self.skipped = [list(r) for r in state.get("skipped", [])]
        self.lr_scale_until = int(state.get("lr_scale_until", 0))
        self.recoveries = int(state.get("recoveries", 0))

    # -- hooks -----------------------------------------------------------------------
    def before_step(self, trainer: TrainerView, step: int) -> None:
        """``train.spikes.replay_skips``: jump over a range an earlier run skipped."""
        consumed = trainer.progress.consumed_samples
        for start, end in self.replay:
            if start <= consumed < end:
                trainer.progress.consumed_samples = end
                self.skipped.append([start, end])
                self.log.event("replay_skip", step, skipped_samples=[start, end])
                return

    def lr_factor(self, step: int) -> float:
        return self.config.lr_factor if step < self.lr_scale_until else 1.0

    def local_flags(self, trainer: TrainerView, step: int, loss: float) -> dict[str, bool]:
        """Observe this step; the verdict joins the loop's one flag all-reduce."""
        if not self.config.enabled:
            return {}
        grad_norm = trainer.step.grad_norm()
        self._observed = (grad_norm, self.detector.observe(loss, grad_norm))
        return {"spike": self._observed[1].flagged}

    def before_optimizer_step(self, trainer: TrainerView, step: int, loss: float) -> Decision:
        if not self.config.enabled:
            return Decision.CONTINUE
        grad_norm, verdict = self._observed
        return self.act(step, loss, grad_norm, verdict, flagged_anywhere=trainer.flags["spike"])

    def act(self, step: int, loss: float, grad_norm: float | None, verdict: Verdict,
            flagged_anywhere: bool) -> Decision:
        """The same decision on every rank; signals outside ``act_on`` are only logged."""
        if flagged_anywhere and not verdict.flagged:
            verdict = Verdict(Signal.LOSS_SPIKE, "flagged on another rank")
        if verdict.flagged and verdict.signal.value not in self.config.act_on:
            self.log.write({"event": "spike_observed", "step": step, "signal": verdict.signal.value,
                            "detail": verdict.detail, "loss": loss, "grad_norm": grad_norm,
                            "action": "none (train.spikes.act_on)"})
            return Decision.CONTINUE
        action = self.planner.decide(step, verdict)
        if action is Action.CONTINUE:
            return Decision.CONTINUE
        self.flagged = (verdict, action)
        return DECISION_OF[action]

    def after_step(self, trainer: TrainerView, outcome: StepOutcome) -> None:
        if outcome.decided_by is self:
            verdict, action = self.flagged
            self.flagged = None
            self._recover(trainer, action, verdict, outcome)

    # -- carrying out the planner's action (no update was applied) --------------------
    def _recover(self, trainer: TrainerView, action: Action, verdict: Verdict, outcome: StepOutcome) -> None:
        progress, step = trainer.progress, outcome.step
        gbs = trainer.global_batch_size
        batch = [progress.consumed_samples, progress.consumed_samples + gbs]
        common = dict(signal=verdict.signal, detail=verdict.detail, action=action, loss=outcome.loss,
                      grad_norm=outcome.grad_norm)
        if action is Action.STOP:
            message = (f"loss-spike recovery gave up at step {step}: {verdict.signal.value} ({verdict.detail}); "
                       f"{len(self.planner.events)} flagged steps within {self.config.recovery_window} steps "
                       f"(max_recoveries={self.config.max_recoveries}). Look at {self.log.path}, "
                       f"the data around samples {batch}, the LR schedule and the grad norms in metrics.jsonl.")
            self.log.event("spike_stop", step, samples=batch, message=message, **common)
            trainer.step.close()
            raise SpikeStop(message)
        self.recoveries += 1
        if action is Action.ROLLBACK:
            if self._roll_back(trainer, step, batch, common):
                return
            common["detail"] += f"; rollback impossible ({self._why}): update skipped instead"
            action = Action.SKIP_UPDATE
            common["action"] = action
        if action is Action.LOWER_LR:
            self.lr_scale_until = step + self.config.lr_steps
        self.skipped.append(batch)
        progress.consumed_samples = batch[1]
        self.log.event("spike_" + action.value, step, samples=batch, skipped_samples=batch,
                       lr_scale_until=self.lr_scale_until, **common)

    def _roll_back(self, trainer: TrainerView, step: int, batch: list[int], common: dict) -> bool:
        backend = trainer.step
        backend.wait_for_saves()
        dist.barrier()
        target, self._why = rollback_target(backend.list_checkpoints(), step, self.config.rollback_steps_before)
        if target is None:
            return False
        backend.scheduler.num_steps = 0  # megatron's scheduler load *adds* the saved step count
        loaded = backend.load(target)
        resume_at = batch[1] + self.config.skip_batches * trainer.global_batch_size
        skipped = [loaded.consumed_samples, resume_at]
        self.skipped.append(skipped)
        dist.barrier()
        if dist.get_rank() == 0:  # the abandoned trajectory's later checkpoints step aside
            abandoned = self.run_dir / "checkpoints_abandoned" / f"spike_step{step}"
            for later in backend.checkpoints_root().glob("iter_*"):
                if int(later.name.split("_")[-1]) > loaded.iteration:
                    abandoned.mkdir(parents=True, exist_ok=True)
                    later.rename(abandoned / later.name)
            backend.mark_latest(loaded.iteration)
        dist.barrier()
        self.log.event("spike_rollback", step, samples=batch, checkpoint=target.name,
                       checkpoint_iteration=loaded.iteration, why=self._why, skipped_samples=skipped,
                       tokens_skipped=(skipped[1] - skipped[0]) * self.seq_length, **common)
        trainer.progress.iteration, trainer.progress.tokens = loaded.iteration, loaded.tokens
        trainer.progress.consumed_samples = resume_at
        self.checkpointing.restored(loaded.iteration)
        return True
