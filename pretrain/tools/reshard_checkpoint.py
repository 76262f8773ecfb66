"""Convert a checkpoint to the fully reshardable optimizer layout, offline, on its own layout.

    torchrun --nproc_per_node=<TP x PP x DP it was saved at> -m pretrain.tools.reshard_checkpoint \\
        SRC_CHECKPOINT DST_RUN_DIR [key=value ...]

Why: the trainer saves the distributed optimizer ``dp_reshardable`` by default (each rank
writes its own flat buffer shard: no gather, fully parallel), which a resume can read at
another DP but not at another TP, PP or virtual-stage count. Changing those (a different
cluster shape, a fallback after losing nodes) goes through this tool once: it rebuilds the
model and optimizer from SRC's run_config.yaml at SRC's layout, loads SRC, and saves the
same state (model, optimizer, scheduler, data position, RNG, trainer state) with
``checkpoint.optimizer_sharding=fully_reshardable`` to ``DST_RUN_DIR/checkpoints/iter_N``
(marker, integrity.json and accounting as a training save writes them). Any later run at
any layout resumes from it: ``checkpoint.load=DST_RUN_DIR/checkpoints/iter_N`` (or
``run_dir=DST_RUN_DIR`` with ``checkpoint.load=auto``).

The conversion pays the fully_reshardable gather once, offline, instead of at every save.
Extra ``key=value`` arguments override SRC's config (e.g. ``checkpoint.fully_parallel=false``);
the parallel layout itself cannot change here: the load needs SRC's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from pretrain import checkpoint as ckpt
from pretrain.config.resolve import saved_run_config

TARGET_SHARDING = "fully_reshardable"


def source_config(src: Path, dst_run_dir: Path, overrides: list[str]) -> DictConfig:
    """SRC's own config, writing under DST; the parallel layout must stay SRC's."""
    if dst_run_dir == src or src in dst_run_dir.parents:
        raise ValueError(f"DST_RUN_DIR {dst_run_dir} is (inside) the source checkpoint {src}: pick a new directory")
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"overrides must be key=value, got {bad} (usage: SRC_CHECKPOINT DST_RUN_DIR [key=value ...])")
    cfg = saved_run_config(src)
    layout = OmegaConf.to_container(cfg.parallel)
    cfg.merge_with(OmegaConf.from_dotlist(overrides))
    if OmegaConf.to_container(cfg.parallel) != layout:
        raise ValueError("reshard_checkpoint loads SRC on the layout that wrote it: do not override parallel.*")
    cfg.run_dir = str(dst_run_dir)
    cfg.checkpoint.load = str(src)
    return cfg


def reshard(src: str | Path, dst_run_dir: str | Path, overrides: list[str] | None = None) -> Path:
    """Collective over a process group of SRC's world size (started here if none). Returns the
    written checkpoint directory. Leaves megatron's model-parallel groups destroyed."""
    from megatron.core import parallel_state
    from megatron.core.num_microbatches_calculator import init_num_microbatches_calculator, \
        unset_num_microbatches_calculator

    from pretrain.cpu_shims import activate_cpu_shims
    from pretrain.train.megatron_step import build_megatron_model
    from pretrain.train.setup import init_distributed

    src, dst_run_dir = Path(src).resolve(), Path(dst_run_dir).resolve()
    cfg = source_config(src, dst_run_dir, overrides or [])
    activate_cpu_shims()
    init_distributed(cfg)
    p = cfg.parallel
    world = p.tensor_model_parallel_size * p.pipeline_model_parallel_size * p.data_parallel_size
    if dist.get_world_size() != world:
        raise ValueError(f"{src} was saved on {world} ranks (TP{p.tensor_model_parallel_size} "
                         f"PP{p.pipeline_model_parallel_size} DP{p.data_parallel_size}); "
                         f"run with torchrun --nproc_per_node={world}, not {dist.get_world_size()}")
    if dist.get_rank() == 0:
        dst_run_dir.mkdir(parents=True, exist_ok=True)
    unset_num_microbatches_calculator()
    init_num_microbatches_calculator(dist.get_rank(), None, cfg.train.global_batch_size,
                                     cfg.train.micro_batch_size, p.data_parallel_size)
    try:
        model, optimizer, scheduler, _ = build_megatron_model(cfg, check_for_nan_in_grad=True, initialize=False)
        progress = ckpt.load_checkpoint(src, model, optimizer, scheduler, cfg)  # SRC's own sharding
        out_cfg = cfg.copy()
        out_cfg.checkpoint.optimizer_sharding = TARGET_SHARDING
        writer = ckpt.CheckpointWriter(out_cfg, out_cfg, async_save=False)
        target = writer.save(model, optimizer, scheduler, progress)
        writer.close()
    finally:
        parallel_state.destroy_model_parallel()
    if dist.get_rank() == 0:
        print(f"wrote {target} ({TARGET_SHARDING}, step {progress.iteration}); resume at any layout "
              f"with checkpoint.load={target}", flush=True)
    return target


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    reshard(argv[0], argv[1], argv[2:])
    from pretrain.train.setup import shutdown

    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
