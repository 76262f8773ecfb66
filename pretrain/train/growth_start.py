"""A grown stage's first launch grows its own checkpoint, on the stage's ranks, before loading it.

Why here: the launch already runs under torchrun with the new stage's world size and TP/PP,
so :func:`pretrain.growth.grow.grow_checkpoint` streams (each rank reads only the old
regions its target slices need and writes its own slices; docs/growth.md, "Streaming
sharded growth") without a launch of its own. The runner (``python -m pretrain.growth``)
only writes the request into the stage config::

    growth: {source: <previous stage's last checkpoint>, ramp_iters, depth_position, depth_init}

Not a callback: callbacks are built once the model is loaded, and the growth decides the
model (``growth.spec``) and the checkpoint to load. It runs after the process groups
exist and before the model is built (:func:`pretrain.train.run._train`).

* Fresh stage (no checkpoint in ``run_dir``): grow into a hidden temporary directory,
  rename it to ``checkpoints/iter_<start>`` and point ``latest`` at it. A crash before the
  marker leaves no ``latest``, so the next launch grows again (stale directories removed);
  after it, the next launch resumes.
* Every launch: the ``growth`` block is completed from the stage's first checkpoint's
  ``run_config.yaml`` (``spec``, ``start_iteration``: what the growth decided), so a resume
  mid-ramp rebuilds the same masks. A request that disagrees with it is refused by key.

The default process group serves (gloo on CPU; NCCL on GPU): dist_checkpointing takes no
other group, and only pickled plans travel through it; the growth's tensors stay on the CPU.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from pretrain.config.resolve import (checkpoint_name, checkpoints_root, finalized_checkpoints, growth_source,
                                     latest_checkpoint, saved_run_config)
from pretrain.growth.spec import GrowthConfigError

REQUEST_KEYS = ("ramp_iters", "depth_position", "depth_init")
GROWING = ".growing"


def grow_at_start(cfg: DictConfig, watchdog: Any = None) -> tuple[DictConfig, dict[str, Any] | None]:
    """(cfg with its growth block completed, this launch's growth report or None).

    A no-op for a config without ``growth.source``. Collective when it grows: every rank of
    the stage calls it. ``watchdog`` (a :class:`HangWatchdog`) hears of every growth step.
    """
    source = growth_source(cfg)
    if source is None:
        return cfg, None
    report = None
    if latest_checkpoint(cfg.run_dir) is None:
        report = _grow(cfg, source, watchdog)
    return _completed(cfg), report


def _grow(cfg: DictConfig, source: Path, watchdog: Any) -> dict[str, Any]:
    """Grow ``source`` into ``run_dir``'s first checkpoint on every rank; the gathered report."""
    from pretrain.checkpoint import write_latest_marker
    from pretrain.growth.grow import grow_checkpoint

    if not (source / "run_config.yaml").is_file():
        raise GrowthConfigError(f"growth.source={source}: not a finalised trainer checkpoint "
                                "(no run_config.yaml)")
    iteration = int(source.name.split("_")[-1])
    root = checkpoints_root(cfg.run_dir)
    final = root / checkpoint_name(iteration)
    staging = root / f".{final.name}{GROWING}"
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank == 0:  # an interrupted growth's leftovers (no `latest` points at them)
        for stale in (staging, final):
            shutil.rmtree(stale, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    mine = {"rank": rank, "steps": 0, "read_bytes": 0, "written_bytes": 0}

    def on_step(record: dict) -> None:
        mine["steps"] += 1
        mine["read_bytes"] += record["read_bytes"]
        mine["written_bytes"] += record["bytes"]
        if watchdog is not None:  # a long growth is progress, not a hang at start-up
            watchdog.progress(0, "start")

    started = time.perf_counter()
    block, streaming = cfg.growth, world > 1
    grow_checkpoint(source, staging, cfg, ramp_iters=int(block.ramp_iters),
                    depth_position=str(block.get("depth_position") or "top"),
                    depth_init=str(block.get("depth_init") or "copy"), streaming=streaming, on_step=on_step)
    if rank == 0:
        staging.rename(final)
        write_latest_marker(cfg.run_dir, iteration)
    dist.barrier()
    ranks: list[dict] = [{} for _ in range(world)]
    dist.all_gather_object(ranks, mine)
    p = cfg.parallel
    report = {"source": str(source), "target": str(final), "world_size": world,
              "tp": int(p.tensor_model_parallel_size), "pp": int(p.pipeline_model_parallel_size),
              "streaming": streaming, "wall_s": round(time.perf_counter() - started, 3),
              "steps": [r["steps"] for r in ranks], "read_bytes": [r["read_bytes"] for r in ranks],
              "written_bytes": [r["written_bytes"] for r in ranks]}
    if rank == 0:
        print(f"[growth] grew {source} -> {final} on {world} ranks (TP{report['tp']} PP{report['pp']}, "
              f"streaming={report['streaming']}) in {report['wall_s']:.1f} s; read per rank "
              f"{[round(b / 2 ** 20, 2) for b in report['read_bytes']]} MiB", flush=True)
    return report


def _completed(cfg: DictConfig) -> DictConfig:
    """``cfg`` with the growth block the stage's first checkpoint was grown with (request kept)."""
    checkpoints = finalized_checkpoints(checkpoints_root(cfg.run_dir))
    if not checkpoints:
        raise GrowthConfigError(f"growth.source is set but {checkpoints_root(cfg.run_dir)} holds no finalised "
                                "checkpoint to take the growth (spec, start_iteration) from")
    grown = OmegaConf.select(saved_run_config(checkpoints[0]), "growth")
    if grown is None or OmegaConf.select(grown, "spec") is None:
        raise GrowthConfigError(f"{checkpoints[0]}/run_config.yaml: no growth.spec; this run dir was not "
                                "grown, so growth.source cannot apply to it")
    request = cfg.growth
    for key in REQUEST_KEYS:
        asked, done = OmegaConf.select(request, key), OmegaConf.select(grown, key)
        if asked is not None and done is not None and asked != done:
            raise GrowthConfigError(f"growth.{key}={asked!r}, but this stage grew with {done!r} "
                                    f"({checkpoints[0]}/run_config.yaml); a stage grows once")
    cfg = cfg.copy()
    cfg.growth = {**OmegaConf.to_container(grown, resolve=True), "source": str(growth_source(cfg))}
    return cfg
