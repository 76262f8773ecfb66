"""Loss-spike detection and the escalating recovery policy.

A two-month run cannot be watched around the clock, so the trainer decides by
itself what to do when a step looks wrong. This module holds that decision as
plain logic (no torch, no process groups) so it can be tested exhaustively; the
training loop feeds it one observation per step and carries out the action.

Signals (any one flags the step):
- non-finite loss or gradient norm;
- loss more than ``loss_sigma`` standard deviations above the mean of the last
  ``window`` good steps (OLMo/MaxText use 6σ over 128 steps);
- gradient norm more than ``grad_norm_sigma`` deviations above its window (a
  steadily rising gradient norm preceded divergence in Tele-FLM's experience);
- a sustained rise: the mean loss of the last ``sustained_window`` steps above
  the mean of the window before it by more than ``sustained_rise`` (relative).

Flagged steps never enter the statistics, so one spike cannot hide the next.

Responses escalate (PaLM, OPT, MaxText practice), each level optional:
1. ``skip_update``: drop this step's gradients;
2. ``rollback``: reload the last good checkpoint from at least
   ``rollback_steps_before`` steps before the spike and skip the next
   ``skip_batches`` global batches of data (PaLM restarted ~100 steps earlier
   and skipped 200-500 batches: the spike came from data x state);
3. ``lower_lr``: scale the learning rate by ``lr_factor`` for ``lr_steps``.
After ``max_recoveries`` flagged events inside ``recovery_window`` steps the run
stops with a clear message instead of looping.

All ranks must reach the same decision: the loop reduces the flag across the
world (with every other per-step flag, :mod:`pretrain.train.flags`) before acting, and the inputs (the DP-averaged loss and the
global gradient norm) are the same on every rank anyway.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from statistics import fmean, pstdev


class Signal(str, Enum):
    NONE = "none"
    NONFINITE = "nonfinite"
    LOSS_SPIKE = "loss_spike"
    GRAD_NORM_SPIKE = "grad_norm_spike"
    SUSTAINED_RISE = "sustained_rise"


class Action(str, Enum):
    CONTINUE = "continue"
    SKIP_UPDATE = "skip_update"
    ROLLBACK = "rollback"
    LOWER_LR = "lower_lr"
    STOP = "stop"


@dataclass
class SpikeConfig:
    """Mirrors ``train.spikes`` in configs/pretrain.yaml one-to-one."""

    enabled: bool = True
    window: int = 128
    min_history: int = 16
    loss_sigma: float = 6.0
    grad_norm_sigma: float = 6.0
    min_loss_std: float = 0.02            # floor on σ so a flat loss does not flag noise
    sustained_window: int = 0             # 0 disables the sustained-rise check
    sustained_rise: float = 0.05
    policies: tuple[str, ...] = ("skip_update", "rollback", "lower_lr")
    # Signals that trigger the ladder; the others are only logged. Early in training grad
    # norms are genuinely bursty (10σ excursions on a healthy demo run), and Tele-FLM left
    # grad-norm spikes with a normal loss alone, so by default they are observed, not acted on.
    act_on: tuple[str, ...] = ("nonfinite", "loss_spike", "sustained_rise")
    rollback_steps_before: int = 100
    skip_batches: int = 200
    lr_factor: float = 0.5
    lr_steps: int = 500
    max_recoveries: int = 5
    recovery_window: int = 2000

    def __post_init__(self) -> None:
        unknown = set(self.policies) - {"skip_update", "rollback", "lower_lr"}
        if unknown:
            raise ValueError(f"train.spikes.policies: unknown policy {sorted(unknown)}; "
                             "choose from skip_update, rollback, lower_lr")
        if self.window < self.min_history or self.min_history < 2:
            raise ValueError("train.spikes.window must be >= train.spikes.min_history >= 2")
        unknown_signals = set(self.act_on) - {s.value for s in Signal if s is not Signal.NONE}
        if unknown_signals:
            raise ValueError(f"train.spikes.act_on: unknown signal {sorted(unknown_signals)}; choose from "
                             "nonfinite, loss_spike, grad_norm_spike, sustained_rise")
        if not 0 < self.lr_factor <= 1:
            raise ValueError(f"train.spikes.lr_factor must be in (0, 1], got {self.lr_factor}")


@dataclass
class Verdict:
    signal: Signal
    detail: str = ""

    @property
    def flagged(self) -> bool:
        return self.signal is not Signal.NONE


class SpikeDetector:
    """Rolling statistics over good steps; ``observe`` classifies one step."""

    def __init__(self, config: SpikeConfig) -> None:
        self.config = config
        self.losses: deque[float] = deque(maxlen=config.window)
        self.grad_norms: deque[float] = deque(maxlen=config.window)
        longest = max(config.window, 2 * config.sustained_window)
        self.long_losses: deque[float] = deque(maxlen=longest)

    def observe(self, loss: float, grad_norm: float | None) -> Verdict:
        cfg = self.config
        if not math.isfinite(loss) or (grad_norm is not None and not math.isfinite(grad_norm)):
            return Verdict(Signal.NONFINITE, f"loss={loss} grad_norm={grad_norm}")
        if len(self.losses) >= cfg.min_history:
            mean, std = fmean(self.losses), max(pstdev(self.losses), cfg.min_loss_std)
            if loss > mean + cfg.loss_sigma * std:
                return Verdict(Signal.LOSS_SPIKE, f"loss {loss:.4f} > mean {mean:.4f} + {cfg.loss_sigma}σ ({std:.4f})")
            if grad_norm is not None and len(self.grad_norms) >= cfg.min_history:
                g_mean = fmean(self.grad_norms)
                g_std = max(pstdev(self.grad_norms), 0.05 * g_mean)
                if grad_norm > g_mean + cfg.grad_norm_sigma * g_std:
                    return Verdict(Signal.GRAD_NORM_SPIKE,
                                   f"grad_norm {grad_norm:.4f} > mean {g_mean:.4f} + {cfg.grad_norm_sigma}σ ({g_std:.4f})")
        self.losses.append(loss)
        if grad_norm is not None:
            self.grad_norms.append(grad_norm)
        self.long_losses.append(loss)
        n = cfg.sustained_window
        if n and len(self.long_losses) >= 2 * n:
            recent = list(self.long_losses)[-n:]
            before = list(self.long_losses)[-2 * n:-n]
            rise = (fmean(recent) - fmean(before)) / max(abs(fmean(before)), 1e-8)
            if rise > cfg.sustained_rise:
                self.long_losses.clear()  # one alarm per rise, not one per step
                return Verdict(Signal.SUSTAINED_RISE, f"mean loss rose {100 * rise:.1f}% over {n} steps")
        return Verdict(Signal.NONE)

    def state_dict(self) -> dict:
        return {"losses": list(self.losses), "grad_norms": list(self.grad_norms),
                "long_losses": list(self.long_losses)}

    def load_state_dict(self, state: dict) -> None:
        self.losses.extend(state.get("losses", []))
        self.grad_norms.extend(state.get("grad_norms", []))
        self.long_losses.extend(state.get("long_losses", []))


@dataclass
class RecoveryPlanner:
    """Turns flagged steps into escalating actions, and refuses to loop forever."""

    config: SpikeConfig
    events: list[int] = field(default_factory=list)   # steps of recent flagged events
    level: int = 0                                    # escalation level inside the window

    def decide(self, step: int, verdict: Verdict) -> Action:
        if not verdict.flagged:
            return Action.CONTINUE
        cfg = self.config
        self.events = [s for s in self.events if step - s < cfg.recovery_window]
        if not self.events:
            self.level = 0
        self.events.append(step)
        if len(self.events) > cfg.max_recoveries:
            return Action.STOP
        ladder = [Action(p) for p in cfg.policies]
        if not ladder:
            return Action.STOP
        # A sustained rise is never fixed by skipping one update: start one rung higher.
        if verdict.signal is Signal.SUSTAINED_RISE and ladder[0] is Action.SKIP_UPDATE \
                and len(ladder) > 1 and self.level == 0:
            self.level = 1
        action = ladder[min(self.level, len(ladder) - 1)]
        self.level += 1
        return action

    def state_dict(self) -> dict:
        return {"events": list(self.events), "level": self.level}

    def load_state_dict(self, state: dict) -> None:
        self.events = list(state.get("events", []))
        self.level = int(state.get("level", 0))


class SpikeStop(RuntimeError):
    """Raised on every rank when the recovery budget is spent; the run exits non-zero."""


def spike_config_from(cfg) -> SpikeConfig:
    """``train.spikes`` (minus ``replay_skips``) -> SpikeConfig."""
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(cfg.train.spikes, resolve=True)
    values.pop("replay_skips", None)
    for key in ("policies", "act_on"):
        if key in values:
            values[key] = tuple(values[key] or ())
    return SpikeConfig(**values)


def load_skip_ranges(spec) -> list[list[int]]:
    """``train.spikes.replay_skips``: a spikes.jsonl path (its ``skipped_samples``) or [[start, end), ...]."""
    import json
    import sys
    from pathlib import Path

    if spec is None or spec == "":
        return []
    if isinstance(spec, str):
        ranges = []
        lines = Path(spec).read_text().splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                if number == len(lines):  # a crash mid-write tears only the last line: nothing to replay
                    print(f"warning: {spec}:{number} is a torn last line; ignored for replay_skips", file=sys.stderr)
                    continue
                raise ValueError(f"train.spikes.replay_skips: {spec}:{number} is not a JSON row ({err})") from err
            if row.get("skipped_samples"):
                ranges.append([int(row["skipped_samples"][0]), int(row["skipped_samples"][1])])
        return sorted(ranges)
    return sorted([int(a), int(b)] for a, b in spec)
