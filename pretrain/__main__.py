"""``python -m pretrain [overrides]``: validate, (re)launch workers, train.

Run without torchrun and with a world size > 1, the command re-launches itself
through ``torch.distributed.run --standalone`` with the same overrides, so
``python -m pretrain parallel=tp2 ...`` works on one machine.  Under torchrun
(WORLD_SIZE/RANK set, e.g. by launch/ on a cluster) it trains directly.
"""

from __future__ import annotations

import os
import subprocess
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from pretrain.config.schema import typed  # also registers pretrain_schema (configs/pretrain.yaml's defaults)
from pretrain.config.validate import ConfigError, validate


def world_size_of(cfg: DictConfig) -> int:
    p = cfg.parallel
    return p.tensor_model_parallel_size * p.pipeline_model_parallel_size * p.data_parallel_size


def relaunch_locally(world_size: int, overrides: list[str]) -> int:
    """One process per rank on this machine; the workers see WORLD_SIZE and train."""
    env = dict(os.environ)
    if not env.get("OMP_NUM_THREADS"):
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // world_size))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={world_size}", "-m", "pretrain", *overrides]
    print(f"launching {world_size} local processes: {' '.join(cmd)}", flush=True)
    return subprocess.call(cmd, env=env)


def preflight(cfg: DictConfig) -> None:
    """Every config rule, before any process group or child process starts."""
    from pretrain.data import read_manifest
    from pretrain.config.resolve import resolve_config, resolve_load_dir

    manifest = read_manifest(cfg.data.path) if cfg.data.path else None
    resolved = resolve_config(cfg, manifest, resolve_load_dir(cfg))
    validate(resolved, int(os.environ["WORLD_SIZE"]) if "WORLD_SIZE" in os.environ else None, manifest)


def print_summary(summary: dict) -> None:
    print(f"\nrun dir: {summary['run_dir']}")
    print(f"steps {summary['steps']} | loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f}"
          + (f" | held-out {summary['last_eval_loss']:.4f}" if summary.get("last_eval_loss") else "")
          + f" | {summary['tokens']:,} tokens | {summary['wall_time_s']:.1f} s this run")
    ckpt_dir = "checkpoints_ds" if summary.get("backend") == "deepspeed" else "checkpoints"
    print(f"checkpoints: {', '.join(summary['checkpoints'])}  (latest: {summary['run_dir']}/{ckpt_dir}/latest)")


@hydra.main(config_path="../configs", config_name="pretrain", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        # configs/pretrain.yaml is typed already; a stage.yaml written by pretrain.growth
        # (--config-name stage) is plain YAML: both end up on the schema here.
        cfg = typed(cfg)
        preflight(cfg)
    except (ConfigError, FileNotFoundError, ValueError, OmegaConfBaseException) as err:
        sys.exit(f"pretrain: {err}")
    world_size = world_size_of(cfg)
    if "WORLD_SIZE" not in os.environ and world_size > 1:
        overrides = list(HydraConfig.get().overrides.task)
        sys.exit(relaunch_locally(world_size, overrides))
    from pretrain.cpu_shims import defer_torch_compile

    defer_torch_compile()  # before megatron is imported; CPU only
    from pretrain.train.run import run
    from pretrain.train.setup import shutdown

    summary = run(cfg)
    if summary is not None:
        print_summary(summary)
    shutdown()
    if cfg.backend == "deepspeed":
        # DeepSpeed workers may abort at interpreter exit ("terminate called without an
        # active exception"): the process group is gone, leave without the teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
