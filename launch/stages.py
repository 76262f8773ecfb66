"""The stages the launcher knows, and how many processes each needs.

One table, so adding a stage is one line. ``distributed`` stages run one process
per rank (torchrun locally, srun tasks on Slurm); the others run one process.
The world size of a distributed stage is read from the same config the stage
itself will read (TP x PP x DP of its ``parallel`` group), so the launcher and
the trainer can never disagree about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@dataclass(frozen=True)
class Stage:
    module: str          # run as `python -m <module> <stage_args...>`
    distributed: bool    # needs world-size processes with a rendezvous
    description: str
    config_name: str | None = None   # its primary config in configs/ (composed to check overrides)
    reads_cluster: bool = False      # its config has a cluster group: the launcher forwards cluster=<preset>


STAGES: dict[str, Stage] = {
    "data_pipeline": Stage("data_pipeline", False, "clean, filter and deduplicate raw text (Ray)",
                           config_name="data_pipeline"),
    "tokenizer": Stage("tokenizer", False, "train the tokenizer and encode the corpus", config_name="tokenizer"),
    "pretrain": Stage("pretrain", True, "megatron-core 3D-parallel pretraining",
                      config_name="pretrain", reads_cluster=True),
    "pretrain.tools.fit_check": Stage("pretrain.tools.fit_check", False, "memory/throughput plan for a model, layout and cluster",
                           config_name="plan", reads_cluster=True),
    "launch.probe": Stage("launch.probe", True,
                          "cluster smoke test: rendezvous, all-reduce, checkpoint, preemption and requeue"),
}


class LaunchConfigError(ValueError):
    """A launch config problem, detected before anything is started or submitted."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key


def stage_by_name(name: str) -> Stage:
    if name not in STAGES:
        raise LaunchConfigError("stage", f"unknown stage {name!r}; choose one of {', '.join(STAGES)}")
    return STAGES[name]


def _override_value(stage_args: Sequence[str], key: str) -> str | None:
    """Last `key=value` (or `+key=value`/`++key=value`) among the stage overrides."""
    value = None
    for arg in stage_args:
        name, sep, rest = arg.lstrip("+").partition("=")
        if sep and name == key:
            value = rest
    return value


def compose_stage_config(stage: Stage, stage_args: Sequence[str]) -> DictConfig | None:
    """The stage's own resolved config (configs/<stage>.yaml + overrides), when it has one.

    Composing it here means a misspelt stage override fails before submission,
    not an hour later in the queue. Stages without a primary config return None.
    """
    config_name = stage.config_name
    if config_name is None or not (CONFIG_DIR / f"{config_name}.yaml").exists():
        return None
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if config_name == "pretrain":
        import pretrain.config.schema  # noqa: F401  registers pretrain_schema (configs/pretrain.yaml's defaults)

    overrides = [a for a in stage_args if not a.startswith("hydra")]
    saved = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    try:
        if saved is not None:
            GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None, job_name=config_name):
            try:
                return compose(config_name=config_name, overrides=overrides)
            except Exception as err:  # hydra's errors name the bad override; keep them
                raise LaunchConfigError("stage_args", f"{stage.module} rejects its overrides: {err}") from err
    finally:
        if saved is not None:
            GlobalHydra.instance().clear()
            GlobalHydra.instance().initialize(saved)


def parallel_config(stage_args: Sequence[str], stage_cfg: DictConfig | None) -> DictConfig:
    """TP/PP/DP of the run: from the stage's composed config, else from configs/parallel/<name>.yaml."""
    if stage_cfg is not None and OmegaConf.select(stage_cfg, "parallel") is not None:
        return stage_cfg.parallel
    name = _override_value(stage_args, "parallel") or "single"
    path = CONFIG_DIR / "parallel" / f"{name}.yaml"
    if not path.exists():
        raise LaunchConfigError("stage_args", f"parallel={name}: no such file {path}")
    cfg = OmegaConf.load(path)
    for arg in stage_args:  # field overrides such as parallel.data_parallel_size=4
        key, sep, value = arg.lstrip("+").partition("=")
        if sep and key.startswith("parallel."):
            OmegaConf.update(cfg, key[len("parallel."):], value)
    return cfg


def world_size(parallel: DictConfig) -> int:
    sizes = {}
    for key in ("tensor_model_parallel_size", "pipeline_model_parallel_size", "data_parallel_size"):
        value = OmegaConf.select(parallel, key, default=1)
        try:
            sizes[key] = int(value)
        except (TypeError, ValueError):
            raise LaunchConfigError(f"parallel.{key}", f"must be a positive integer, got {value!r}") from None
        if sizes[key] < 1:
            raise LaunchConfigError(f"parallel.{key}", f"must be a positive integer, got {value!r}")
    return sizes["tensor_model_parallel_size"] * sizes["pipeline_model_parallel_size"] * sizes["data_parallel_size"]
