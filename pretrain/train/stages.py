"""The stage schedule (``train.stages``) and the batch-size ramp as pure functions of the step.

A real run is several phases (Tele-FLM / FLM-101B change batch size by stage; MiniCPM's
WSD and OLMo 2's mid-training end on an annealing mix with a decaying LR). Each stage
starts at a 1-based optimizer step and lasts until the next one starts (the last until
``train.train_iters``); it may set the mixture weights, the LR segment and the global
batch size, each inherited from the stage before when null. Everything here is a pure
function of the config and the step (or consumed samples, for megatron's ramp), so a
resumed run recomputes exactly what an uninterrupted one used; only the *realised*
mixture (where each weight change actually happened) is state, kept by
:class:`pretrain.train.callbacks.data_mixture.DataMixture`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from omegaconf import DictConfig, OmegaConf

LR_STYLES = ("constant", "linear", "cosine", "1-sqrt")
RAMPUP_LR_SCALING = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}


@dataclass(frozen=True)
class LRSegment:
    style: str
    start: float
    end: float

    def at(self, fraction: float) -> float:
        """LR at ``fraction`` in [0, 1] of the segment (0: its first step, 1: its last)."""
        f = min(max(fraction, 0.0), 1.0)
        if self.style == "constant":
            return self.start
        if self.style == "linear":
            shape = 1.0 - f
        elif self.style == "cosine":
            shape = 0.5 * (1.0 + math.cos(math.pi * f))
        elif self.style == "1-sqrt":
            shape = 1.0 - math.sqrt(f)
        else:
            raise ValueError(f"LR style {self.style!r}: use one of {LR_STYLES}")
        return self.end + (self.start - self.end) * shape


@dataclass(frozen=True)
class Stage:
    index: int
    name: str
    start_step: int
    last_step: int                       # inclusive: the next stage's start - 1, or train_iters
    weights: dict[str, float] | None     # None: the base weights (data.weights / the manifest)
    lr: LRSegment | None                 # None: the base scheduler (train.lr_decay_style)
    global_batch_size: int | None        # None: train.global_batch_size or the ramp


def stages_from(cfg: DictConfig) -> list[Stage]:
    """``train.stages`` resolved: sorted by start, nulls inherited from the stage before."""
    t = cfg.train
    raw = sorted((OmegaConf.to_container(s, resolve=True) if not isinstance(s, dict) else dict(s)
                  for s in (t.stages or [])), key=lambda s: int(s["start_step"]))
    stages: list[Stage] = []
    weights, batch = None, None
    for i, s in enumerate(raw):
        start = int(s["start_step"])
        last = int(raw[i + 1]["start_step"]) - 1 if i + 1 < len(raw) else int(t.train_iters)
        if s.get("weights"):
            weights = {k: float(v) for k, v in s["weights"].items()}
        if s.get("global_batch_size"):
            batch = int(s["global_batch_size"])
        lr = s.get("lr")
        segment = None
        if lr:
            style = lr.get("style") or "constant"
            first = float(lr["start"]) if lr.get("start") is not None else float(t.lr)
            end = first if style == "constant" else (
                float(lr["end"]) if lr.get("end") is not None else float(t.min_lr))
            segment = LRSegment(style, first, end)
        stages.append(Stage(i, s.get("name") or f"stage{i}", start, last, weights, segment, batch))
    return stages


def stage_at(stages: list[Stage], step: int) -> Stage | None:
    """The stage step ``step`` (1-based) trains in; None before the first one starts."""
    current = None
    for stage in stages:
        if stage.start_step <= step:
            current = stage
    return current


def weights_at(stages: list[Stage], step: int, base: dict[str, float]) -> dict[str, float]:
    stage = stage_at(stages, step)
    return dict(stage.weights) if stage is not None and stage.weights is not None else dict(base)


def stage_lr(stages: list[Stage], step: int) -> float | None:
    """train.lr's group LR at ``step`` when its stage sets an LR segment; None otherwise."""
    stage = stage_at(stages, step)
    if stage is None or stage.lr is None:
        return None
    span = max(stage.last_step - stage.start_step, 1)
    return stage.lr.at((step - stage.start_step) / span)


def rampup_from(cfg: DictConfig) -> list[int] | None:
    ramp = cfg.train.rampup_batch_size
    return [int(x) for x in ramp] if ramp else None


def rampup_batch(ramp: list[int], global_batch_size: int, consumed_samples: int) -> int:
    """megatron-core's ramp (``RampupBatchsizeNumMicroBatchesCalculator.update``) as a pure
    function: from ``start``, + ``increment`` every ``ramp_samples / increments`` consumed
    samples, ``global_batch_size`` once more than ``ramp_samples`` are consumed."""
    start, increment, ramp_samples = ramp
    if consumed_samples > ramp_samples:
        return global_batch_size
    increments = (global_batch_size - start) // increment
    per_increment = ramp_samples / increments
    return start + int(consumed_samples / per_increment) * increment


def global_batch_at(cfg: DictConfig, stages: list[Stage], step: int, consumed_samples: int) -> int:
    """The global batch of ``step``: its stage's when set, else the ramp's, else the config's."""
    stage = stage_at(stages, step)
    if stage is not None and stage.global_batch_size is not None:
        return stage.global_batch_size
    ramp = rampup_from(cfg)
    if ramp is not None:
        return rampup_batch(ramp, cfg.train.global_batch_size, consumed_samples)
    return int(cfg.train.global_batch_size)
