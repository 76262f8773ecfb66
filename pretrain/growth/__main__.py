"""``python -m pretrain.growth schedule=<name> [run_dir=...] [trainer overrides]``: a staged run, end to end.

``schedule=``, ``schedule.*`` and ``run_dir=`` configure the runner
(``configs/growth/runner.yaml``); every other ``key=value`` is a trainer
override applied to every stage (e.g. ``data.path=...``).

For each stage of ``configs/growth/schedule/<name>.yaml``: compose the trainer
config (``configs/pretrain.yaml`` + the stage's model/parallel/LR keys); for a
grown stage add the ``growth`` request (the previous stage's last checkpoint
and the growth options); write the stage's config to ``<stage dir>/stage.yaml``
and run the trainer CLI on it (torchrun when the layout needs several
processes).  The runner grows nothing itself: the grown stage's first trainer
launch grows the checkpoint on its own ranks, streaming, before loading it
(``pretrain.train.growth_start``).  Re-running the command resumes: a stage
whose latest checkpoint is at its last iteration is skipped as done, a stage
with checkpoints resumes from its latest one (mid-ramp included: the mask value
is a function of the saved iteration), a stage without any grows and trains.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

import pretrain.config.schema  # noqa: F401  registers pretrain_schema before composing "pretrain"
from pretrain.growth.schedule import Stage, base_overrides, parse_stages, schedule_overrides, stage_iters
from pretrain.growth.spec import GrowthConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
STAGE_CONFIG = "stage.yaml"


def _compose(config_dir: Path, name: str, overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return compose(config_name=name, overrides=overrides)


RUNNER_KEYS = ("schedule", "run_dir", "trainer_overrides")


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(runner overrides, trainer overrides for every stage)."""
    def is_runner(arg: str) -> bool:
        key = arg.lstrip("+~").split("=", 1)[0]
        return key.split(".", 1)[0] in RUNNER_KEYS
    return [a for a in argv if is_runner(a)], [a for a in argv if not is_runner(a)]


def runner_config(argv: list[str]) -> DictConfig:
    runner_args, trainer_args = split_argv(argv)
    cfg = _compose(CONFIGS / "growth", "runner", runner_args)
    cfg.trainer_overrides = list(cfg.trainer_overrides or []) + trainer_args
    return cfg


def stage_configs(runner: DictConfig) -> list[tuple[Stage, DictConfig]]:
    """Every stage's full trainer config (iterations cumulative, one data stream for all)."""
    stages = parse_stages(runner.schedule)
    common = list(runner.schedule.get("trainer_overrides") or []) + list(runner.trainer_overrides or [])
    run_dir = Path(runner.run_dir)
    shaped = [(s, _compose(CONFIGS, "pretrain", base_overrides(s, common))) for s in stages]
    iters = [stage_iters(s, cfg) for s, cfg in shaped]
    total_samples = sum(n * cfg.train.global_batch_size for n, (_, cfg) in zip(iters, shaped))
    out, start = [], 0
    for (stage, _), n in zip(shaped, iters):
        extra = schedule_overrides(stage, start, n, total_samples, run_dir)
        cfg = _compose(CONFIGS, "pretrain", base_overrides(stage, common) + extra)
        out.append((stage, cfg))
        start += n
    return out


def world_size(cfg: DictConfig) -> int:
    p = cfg.parallel
    return p.tensor_model_parallel_size * p.pipeline_model_parallel_size * p.data_parallel_size


def write_stage_config(cfg: DictConfig, stage_dir: Path) -> Path:
    """The stage's trainer config as a file the trainer CLI can be pointed at (``--config-dir``)."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    data = OmegaConf.to_container(cfg, resolve=True)
    data["hydra"] = {"run": {"dir": str(stage_dir / "hydra" / "${now:%Y%m%d-%H%M%S}-rank${oc.env:RANK,0}")},
                     "job": {"chdir": False}, "output_subdir": None}
    path = stage_dir / STAGE_CONFIG
    OmegaConf.save(OmegaConf.create(data), path)
    return path


def run_trainer(stage_dir: Path, cfg: DictConfig) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    # The trainer grows the checkpoint at a grown stage's first launch (pretrain.train.growth_start),
    # builds the masked model and ramps it (pretrain.train.callbacks.growth_ramp).
    args = ["-m", "pretrain", "--config-dir", str(stage_dir.resolve()), "--config-name", "stage"]
    n = world_size(cfg)
    cmd = [sys.executable, *(["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"] if n > 1
                             else []), *args]
    print(f"[growth] {' '.join(cmd)}", flush=True)
    code = subprocess.call(cmd, env=env)
    if code != 0:
        raise SystemExit(f"pretrain.growth: stage in {stage_dir} failed (exit {code}); re-run the same command "
                         "to resume")


def latest_iteration(run_dir: Path) -> int | None:
    from pretrain.checkpoint import latest_checkpoint

    path = latest_checkpoint(run_dir)
    return None if path is None else int(path.name.split("_")[-1])


def growth_request(previous: DictConfig, stage: Stage, cfg: DictConfig, fresh: bool) -> DictConfig:
    """``cfg`` with the growth block that asks the stage's first trainer launch to grow the
    previous stage's final checkpoint (pretrain.train.growth_start), on the stage's own ranks.

    ``fresh`` (the stage has no checkpoint yet): the source must be there. A resumed stage
    takes spec and start iteration from its own checkpoints; the request is only checked
    against them."""
    from pretrain.checkpoint import checkpoint_name, checkpoints_root, latest_checkpoint

    end = int(previous.train.train_iters)
    source = checkpoints_root(previous.run_dir) / checkpoint_name(end)
    if fresh:
        found = latest_checkpoint(previous.run_dir)
        if found is None or found.name != source.name:
            raise GrowthConfigError(f"stage {stage.name}: the previous stage's last checkpoint should be "
                                    f"{source.name} in {previous.run_dir}, found {found}")
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    cfg.growth = {"source": str(source.resolve()), "ramp_iters": stage.mask_ramp_iters,
                  "depth_position": stage.depth_position, "depth_init": stage.depth_init}
    return cfg


def run(argv: list[str]) -> list[Path]:
    runner = runner_config(argv)
    stages = stage_configs(runner)
    stage_dirs = []
    previous: DictConfig | None = None
    for stage, cfg in stages:
        stage_dir = Path(cfg.run_dir)
        stage_dirs.append(stage_dir)
        done = latest_iteration(stage_dir)
        if stage.grown:
            cfg = growth_request(previous, stage, cfg, fresh=done is None)
        write_stage_config(cfg, stage_dir)
        if done is None or done < cfg.train.train_iters:
            print(f"[growth] stage {stage.index} ({stage.name}): iterations "
                  f"{done or 0} -> {cfg.train.train_iters}", flush=True)
            run_trainer(stage_dir, cfg)
        else:
            print(f"[growth] stage {stage.index} ({stage.name}) already done", flush=True)
        previous = cfg
    return stage_dirs


if __name__ == "__main__":
    try:
        run(sys.argv[1:])
    except GrowthConfigError as err:
        sys.exit(f"pretrain.growth: {err}")
