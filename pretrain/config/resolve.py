"""What decides a run's effective config before anything heavy is imported.

Kept free of torch/megatron imports so ``python -m pretrain`` can validate and
re-launch itself in about a second (the workers import megatron, not the parent).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pretrain.config.schema import typed

RUN_CONFIG = "run_config.yaml"
LATEST = "latest"


def padded_vocab_size(vocab_size: int, divisible_by: int, tensor_parallel_size: int) -> int:
    """Round the vocabulary up so every TP rank holds an equal, aligned slice."""
    multiple = divisible_by * tensor_parallel_size
    return int(math.ceil(vocab_size / multiple) * multiple)


def resolved_vocab_size(model_cfg: DictConfig, tensor_parallel_size: int) -> int:
    """``model.padded_vocab_size`` when set (a resumed run keeps its checkpoint's
    padding so it can reshard), else vocab rounded up to divisible_by × TP."""
    if model_cfg.padded_vocab_size:
        return model_cfg.padded_vocab_size
    return padded_vocab_size(model_cfg.vocab_size, model_cfg.make_vocab_size_divisible_by, tensor_parallel_size)


def checkpoints_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_name(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def finalized_checkpoints(root: str | Path, before: str | None = None) -> list[Path]:
    """``iter_*`` directories under ``root`` whose save was finalised (run_config.yaml is
    written after every rank finished writing), oldest first; only names < ``before``."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("iter_*")
                  if p.is_dir() and (p / RUN_CONFIG).is_file() and (before is None or p.name < before))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint ``checkpoints/latest`` names, if it exists.

    A marker naming a directory that is gone (moved aside as corrupt, deleted by hand)
    falls back to the newest finalised checkpoint older than the name, with a warning,
    instead of silently starting the run from scratch."""
    marker = checkpoints_root(run_dir) / LATEST
    if not marker.is_file():
        return None
    name = marker.read_text().strip()
    path = checkpoints_root(run_dir) / name
    if path.is_dir():
        return path
    older = finalized_checkpoints(checkpoints_root(run_dir), before=name)
    if older:
        print(f"warning: {marker} names {name}, which does not exist; using {older[-1].name}", flush=True)
        return older[-1]
    return None


def saved_run_config(checkpoint_dir: str | Path) -> DictConfig:
    return OmegaConf.load(Path(checkpoint_dir) / RUN_CONFIG)


def resolve_load_dir(cfg: DictConfig) -> Path | None:
    """``checkpoint.load``: auto (run_dir's latest, if any) | none | an explicit directory."""
    load = cfg.checkpoint.load
    if load in (None, "none", False):
        return None
    if load == "auto":
        return latest_checkpoint(cfg.run_dir)
    path = Path(load)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint.load='{load}' is not a directory")
    return path


def runs_on_gpu(cfg: DictConfig | None = None) -> bool:
    """Where the run's ranks will train: this machine's CUDA, or (from a login node) the cluster
    preset's GPUs when the config carries one. A process that has torch loaded asks CUDA; the
    re-launching parent (no torch, see above) asks for the NVIDIA driver instead."""
    if "torch" in sys.modules:
        if sys.modules["torch"].cuda.is_available():
            return True
    elif Path("/proc/driver/nvidia/version").exists() and os.environ.get("CUDA_VISIBLE_DEVICES") != "":
        return True
    gpus = OmegaConf.select(cfg, "cluster.gpus_per_node") if cfg is not None else None
    return bool(gpus) and OmegaConf.select(cfg, "cluster.launcher") == "slurm"


def resolve_precision(cfg: DictConfig, on_gpu: bool) -> None:
    """``train.bf16: null`` becomes BF16 on GPUs and fp32 on CPU: a 52B run never trains in fp32
    because a flag was left at its CPU default (validate.py refuses an explicit fp32 on GPUs)."""
    if cfg.train.bf16 is None:
        cfg.train.bf16 = on_gpu


def growth_source(cfg: DictConfig) -> Path | None:
    """``growth.source``: the checkpoint a grown stage grows from at its first launch
    (:mod:`pretrain.train.growth_start`); None for any other run."""
    source = OmegaConf.select(cfg, "growth.source")
    return None if source is None else Path(source)


def resolve_config(cfg: DictConfig, manifest: dict[str, Any] | None, load_dir: Path | None,
                   on_gpu: bool | None = None) -> DictConfig:
    """Fill in what the data, the machine and an existing checkpoint decide.

    * ``model.vocab_size`` comes from the tokenizer manifest (the model config's without one:
      a dry run on a login node that cannot see the data).
    * ``model.padded_vocab_size`` is the checkpoint's when resuming (so a run
      can reshard to a TP that divides it), the growth source's when a grown stage has not
      grown yet (growth keeps the old vocabulary), else vocab padded for this TP.
    * ``train.bf16`` null: true on GPUs (:func:`resolve_precision`).
    """
    cfg = typed(cfg)  # a resolved, typed copy (interpolations gone)
    resolve_precision(cfg, runs_on_gpu(cfg) if on_gpu is None else on_gpu)
    if manifest is not None:
        cfg.model.vocab_size = int(manifest["vocab_size"])
    tp = cfg.parallel.tensor_model_parallel_size
    if cfg.model.padded_vocab_size is None:
        padded = None
        decided_by = load_dir if load_dir is not None else growth_source(cfg)
        if decided_by is not None and (decided_by / RUN_CONFIG).is_file():
            # a saved run_config.yaml is untyped (and may predate the key)
            padded = OmegaConf.select(saved_run_config(decided_by), "model.padded_vocab_size")
        cfg.model.padded_vocab_size = int(padded) if padded else resolved_vocab_size(cfg.model, tp)
    return cfg
