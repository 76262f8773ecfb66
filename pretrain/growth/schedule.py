"""A growth schedule: stages of one run, each a trainer config, grown checkpoints between.

Schedule file (``configs/growth/schedule/<name>.yaml``), one key per concept::

    name: tiny_cpu
    trainer_overrides: [...]     # every stage: data.path, train.seed, logging ...
    stages:
      - name: small
        model: tiny              # configs/model preset ...
        model_overrides: {...}   # ... and the shape of this stage
        parallel: single         # configs/parallel preset
        parallel_overrides: {}
        iters: 40                # or tokens: (iters = ceil(tokens / (global batch × seq)))
        global_batch_size: 16
        micro_batch_size: 4
        lr: 3.0e-3               # peak LR of the stage (after its (re-)warm-up)
        min_lr: 3.0e-4
        lr_decay_iters: 120      # the stage's cosine/WSD decay length (default: its iters)
        warmup_iters: 10         # first stage only
      - name: wider
        ...
        rewarm_iters: 5          # grown stages: re-warm-up from 0 to lr
        mask_ramp_iters: 10      # MSG masks 0 -> 1 over this many steps
        depth_position: top      # top | interleave (where new layers go)
        depth_init: copy         # copy | random

The iteration count and consumed samples continue across stages (stage k
trains until the sum of iters of stages 0..k); every stage reads one data
stream sized for the whole schedule (``data.train_samples``), so no sample is
seen twice or skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pretrain.growth.spec import DEPTH_INITS, DEPTH_POSITIONS, GrowthConfigError

STAGE_KEYS = {"name", "model", "model_overrides", "parallel", "parallel_overrides", "iters", "tokens",
              "global_batch_size", "micro_batch_size", "lr", "min_lr", "lr_decay_iters", "lr_decay_style",
              "warmup_iters", "rewarm_iters", "mask_ramp_iters", "depth_position", "depth_init",
              "trainer_overrides"}


@dataclass
class Stage:
    index: int
    name: str
    model: str
    parallel: str
    lr: float
    min_lr: float
    iters: int | None = None
    tokens: int | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)
    parallel_overrides: dict[str, Any] = field(default_factory=dict)
    global_batch_size: int | None = None
    micro_batch_size: int | None = None
    lr_decay_iters: int | None = None
    lr_decay_style: str | None = None
    warmup_iters: int = 0
    mask_ramp_iters: int = 0
    depth_position: str = "top"
    depth_init: str = "copy"
    trainer_overrides: list[str] = field(default_factory=list)

    @property
    def grown(self) -> bool:
        return self.index > 0

    @property
    def dir_name(self) -> str:
        return f"stage{self.index}_{self.name}"


def _stage(index: int, raw: dict[str, Any]) -> Stage:
    where = f"stages[{index}]"
    unknown = set(raw) - STAGE_KEYS
    if unknown:
        raise GrowthConfigError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(STAGE_KEYS)}")
    for key in ("name", "model", "parallel", "lr", "min_lr"):
        if raw.get(key) is None:
            raise GrowthConfigError(f"{where}.{key} is required")
    if (raw.get("iters") is None) == (raw.get("tokens") is None):
        raise GrowthConfigError(f"{where}: give exactly one of iters / tokens")
    if index == 0:
        for key in ("rewarm_iters", "mask_ramp_iters", "depth_position", "depth_init"):
            if key in raw:
                raise GrowthConfigError(f"{where}.{key}: the first stage is not grown (use warmup_iters)")
        warmup = int(raw.get("warmup_iters", 0))
    else:
        if "warmup_iters" in raw:
            raise GrowthConfigError(f"{where}.warmup_iters: grown stages re-warm up, use rewarm_iters")
        if raw.get("mask_ramp_iters") is None:
            raise GrowthConfigError(f"{where}.mask_ramp_iters is required for a grown stage")
        warmup = int(raw.get("rewarm_iters", 0))
    position, init = raw.get("depth_position", "top"), raw.get("depth_init", "copy")
    if position not in DEPTH_POSITIONS:
        raise GrowthConfigError(f"{where}.depth_position={position!r}: use one of {DEPTH_POSITIONS}")
    if init not in DEPTH_INITS:
        raise GrowthConfigError(f"{where}.depth_init={init!r}: use one of {DEPTH_INITS}")
    return Stage(index=index, name=str(raw["name"]), model=str(raw["model"]), parallel=str(raw["parallel"]),
                 lr=float(raw["lr"]), min_lr=float(raw["min_lr"]),
                 iters=None if raw.get("iters") is None else int(raw["iters"]),
                 tokens=None if raw.get("tokens") is None else int(float(raw["tokens"])),
                 model_overrides=dict(raw.get("model_overrides") or {}),
                 parallel_overrides=dict(raw.get("parallel_overrides") or {}),
                 global_batch_size=raw.get("global_batch_size"), micro_batch_size=raw.get("micro_batch_size"),
                 lr_decay_iters=raw.get("lr_decay_iters"), lr_decay_style=raw.get("lr_decay_style"),
                 warmup_iters=warmup, mask_ramp_iters=int(raw.get("mask_ramp_iters", 0)),
                 depth_position=position, depth_init=init,
                 trainer_overrides=list(raw.get("trainer_overrides") or []))


def parse_stages(schedule: DictConfig) -> list[Stage]:
    raw = OmegaConf.to_container(schedule, resolve=True)
    stages = raw.get("stages")
    if not stages:
        raise GrowthConfigError("schedule.stages is empty: a schedule needs at least one stage")
    parsed = [_stage(i, dict(s)) for i, s in enumerate(stages)]
    names = [s.name for s in parsed]
    if len(set(names)) != len(names):
        raise GrowthConfigError(f"schedule.stages: stage names must be unique, got {names}")
    return parsed


def _overrides(prefix: str, values: dict[str, Any]) -> list[str]:
    return [f"{prefix}.{key}={_value(value)}" for key, value in values.items()]


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    return str(value)


def base_overrides(stage: Stage, common: list[str]) -> list[str]:
    """Trainer overrides for a stage's shape and layout (before iterations are known)."""
    out = [f"model={stage.model}", f"parallel={stage.parallel}", *common]
    out += _overrides("model", stage.model_overrides) + _overrides("parallel", stage.parallel_overrides)
    if stage.global_batch_size is not None:
        out.append(f"train.global_batch_size={stage.global_batch_size}")
    if stage.micro_batch_size is not None:
        out.append(f"train.micro_batch_size={stage.micro_batch_size}")
    return out + list(stage.trainer_overrides)


def stage_iters(stage: Stage, cfg: DictConfig) -> int:
    if stage.iters is not None:
        return stage.iters
    per_step = int(cfg.train.global_batch_size) * int(cfg.model.seq_length)
    return int(math.ceil(stage.tokens / per_step))


def schedule_overrides(stage: Stage, start_iteration: int, iters: int, total_samples: int,
                       run_dir: Path) -> list[str]:
    """LR, length, data stream and run directory of one stage."""
    out = [f"run_dir={run_dir / stage.dir_name}", f"train.train_iters={start_iteration + iters}",
           f"train.lr={stage.lr}", f"train.min_lr={stage.min_lr}",
           f"train.lr_warmup_iters={stage.warmup_iters}",
           f"train.lr_decay_iters={stage.lr_decay_iters or iters}", f"data.train_samples={total_samples}",
           # growth reads the optimizer state in model space (grow.py refuses dp_reshardable)
           "checkpoint.optimizer_sharding=fully_reshardable"]
    if stage.lr_decay_style:
        out.append(f"train.lr_decay_style={stage.lr_decay_style}")
    return out
