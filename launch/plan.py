"""Turn the launch config into a checked, concrete plan before anything starts.

Every check names the config key at fault, so a bad preset or override fails
on the login node in a second instead of in the queue. The plan is the single
input of both the local and the Slurm backends.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from launch.stages import (LaunchConfigError, Stage, compose_stage_config, parallel_config,
                           stage_by_name, world_size)

REPO_ROOT = Path(__file__).resolve().parents[1]
TASK_LAYOUTS = ("per_node", "per_gpu")
LAUNCHERS = ("local", "slurm")


@dataclass
class LaunchPlan:
    stage_name: str
    stage: Stage
    stage_args: list[str]
    stage_config: DictConfig | None     # the stage's own resolved config, when it has a primary config
    launcher: str                       # local | slurm
    nodes: int
    procs_per_node: int                 # ranks per node (1 for non-distributed stages)
    task_layout: str
    python: str
    workdir: Path
    launch_dir: Path                    # sbatch script, Slurm logs, launch.json
    env: dict[str, str] = field(default_factory=dict)

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node


def _positive_int(cfg: DictConfig, key: str, allow_zero: bool = False) -> int:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        kind = "a non-negative" if allow_zero else "a positive"
        raise LaunchConfigError(key, f"must be {kind} integer, got {value!r}")
    return value


def _check_slurm_section(cfg: DictConfig) -> None:
    if OmegaConf.select(cfg, "cluster.slurm") is None:
        raise LaunchConfigError("cluster.slurm", f"preset {cfg.cluster.get('name')!r} has launcher=slurm but no slurm section")
    time_min = _positive_int(cfg, "cluster.slurm.time_min")
    delay = _positive_int(cfg, "cluster.slurm.signal_delay_s")
    if delay >= time_min * 60:
        raise LaunchConfigError("cluster.slurm.signal_delay_s",
                                f"{delay} s warning is not shorter than the time limit ({time_min} min)")
    if cfg.cluster.slurm.get("container_mounts") and not cfg.cluster.slurm.get("container_image"):
        raise LaunchConfigError("cluster.slurm.container_mounts", "set, but cluster.slurm.container_image is not")
    if cfg.cluster.gpus_per_node > 0:
        _positive_int(cfg, "cluster.cpus_per_gpu")
    else:
        _positive_int(cfg, "cluster.cpus_per_node")
    _positive_int(cfg, "cluster.mem_gb_per_node")


def _launch_dir(cfg: DictConfig, stage_args: list[str], workdir: Path) -> Path:
    """Launcher records next to the run they launched, so a run directory tells its own story."""
    if cfg.launch_dir:
        return Path(str(cfg.launch_dir)).absolute()
    stage_run_dir = None
    for arg in stage_args:
        key, sep, value = arg.lstrip("+").partition("=")
        if sep and key == "run_dir":
            stage_run_dir = value
    if stage_run_dir:
        return (workdir / stage_run_dir / "launch").absolute()
    return (workdir / "runs" / "launch" / str(cfg.stage) / time.strftime("%Y%m%d-%H%M%S")).absolute()


def make_plan(cfg: DictConfig, cluster_overrides: list[str] | None = None) -> LaunchPlan:
    """``cluster_overrides``: the command line's cluster.* overrides, forwarded with the preset
    to stages that read the cluster group themselves (the trainer's MFU, the planner)."""
    stage = stage_by_name(str(cfg.stage))
    stage_args = [str(a) for a in cfg.stage_args]
    if stage.reads_cluster and not any(a.lstrip("+").startswith("cluster") for a in stage_args):
        stage_args = [f"cluster={cfg.cluster.name}", *(cluster_overrides or []), *stage_args]
    launcher = OmegaConf.select(cfg, "cluster.launcher")
    if launcher not in LAUNCHERS:
        raise LaunchConfigError("cluster.launcher", f"must be one of {LAUNCHERS}, got {launcher!r}")
    if cfg.task_layout not in TASK_LAYOUTS:
        raise LaunchConfigError("task_layout", f"must be one of {TASK_LAYOUTS}, got {cfg.task_layout!r}")
    nodes = _positive_int(cfg, "cluster.nodes")
    gpus_per_node = _positive_int(cfg, "cluster.gpus_per_node", allow_zero=True)
    if launcher == "slurm":
        _check_slurm_section(cfg)

    stage_cfg = compose_stage_config(stage, stage_args)
    if stage.distributed:
        world = world_size(parallel_config(stage_args, stage_cfg))
        if launcher == "local":
            if nodes != 1:
                raise LaunchConfigError("cluster.nodes", f"the local launcher runs on one node, got {nodes}")
            if gpus_per_node and world > gpus_per_node:
                raise LaunchConfigError("cluster.gpus_per_node",
                                        f"world size {world} (TP x PP x DP) does not fit {gpus_per_node} local GPUs")
            procs_per_node = world
        else:
            per_node = gpus_per_node or max(1, world // nodes)
            if world != nodes * per_node:
                raise LaunchConfigError(
                    "cluster.nodes",
                    f"world size {world} (TP x PP x DP from the parallel config) != cluster.nodes {nodes} x "
                    f"{'cluster.gpus_per_node' if gpus_per_node else 'ranks per node'} {per_node}; "
                    f"set cluster.nodes={max(1, world // per_node)} or change parallel.data_parallel_size")
            procs_per_node = per_node
    else:
        nodes, procs_per_node = 1, 1   # single-process stages use one node whatever the preset says

    env = {str(k): str(v) for k, v in (OmegaConf.select(cfg, "cluster.env") or {}).items()}
    env.update({str(k): str(v) for k, v in (cfg.env or {}).items()})
    workdir = Path(cfg.workdir) if cfg.workdir else REPO_ROOT
    launch_dir = _launch_dir(cfg, stage_args, workdir)
    return LaunchPlan(stage_name=str(cfg.stage), stage=stage, stage_args=stage_args, stage_config=stage_cfg,
                      launcher=launcher, nodes=nodes, procs_per_node=procs_per_node,
                      task_layout=str(cfg.task_layout), python=str(cfg.python or sys.executable),
                      workdir=workdir, launch_dir=launch_dir, env=env)


def stage_command(plan: LaunchPlan) -> list[str]:
    """`python -m <stage> <overrides>`: what every rank (or the single process) runs."""
    return [plan.python, "-m", plan.stage.module, *plan.stage_args]


def max_restarts(plan: LaunchPlan, cluster: DictConfig) -> int:
    """``cluster.max_restarts`` (default 0): how often torchrun restarts the workers in the allocation.

    Why in the allocation and not by requeue: a rank that dies (OOM kill, a segfault, a
    SIGKILL) costs a requeue a trip through the queue and a fresh start-up of every node;
    torchrun's agents (locally: the one agent) notice the dead worker, stop the others, meet again at the same c10d
    rendezvous (the store lives in the first node's agent, which did not die) and restart
    every rank, which resumes from the latest checkpoint. Needs torchrun: the per_node layout.
    """
    value = cluster.get("max_restarts", 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise LaunchConfigError("cluster.max_restarts", f"must be a non-negative integer, got {value!r}")
    if value and plan.stage.distributed and plan.task_layout != "per_node":
        raise LaunchConfigError("cluster.max_restarts",
                                f"{value} needs torchrun, which only task_layout=per_node runs "
                                f"(got task_layout={plan.task_layout}); set cluster.max_restarts=0")
    return value
