"""Run a stage on this machine: one process, or torchrun for distributed stages.

The launcher starts torchrun itself (instead of letting ``python -m pretrain``
re-launch itself) so local and Slurm runs share one code path for the world
size and the environment, and so WORLD_SIZE is set when the stage starts.
"""

from __future__ import annotations

import os
import subprocess

from launch.plan import LaunchPlan, stage_command


def local_command(plan: LaunchPlan, max_restarts: int = 0) -> list[str]:
    """``max_restarts`` (``cluster.max_restarts``): how often torchrun restarts the whole group
    after a worker fails, e.g. the hang watchdog's exit 79 (docs/fault_tolerance.md); the
    trainer resumes from its latest checkpoint each time."""
    command = stage_command(plan)
    if plan.stage.distributed and plan.world_size > 1:
        restarts = [f"--max-restarts={max_restarts}"] if max_restarts else []
        return [plan.python, "-m", "torch.distributed.run", "--standalone", *restarts,
                f"--nproc_per_node={plan.procs_per_node}", "-m", plan.stage.module, *plan.stage_args]
    return command


def local_env(plan: LaunchPlan) -> dict[str, str]:
    env = dict(os.environ)
    # Several ranks share the cores: one intra-op thread each unless the preset says otherwise.
    if plan.world_size > 1:
        env.setdefault("OMP_NUM_THREADS", "1")
        # torchrun's c10d rendezvous shares its TCPStore with the workers by default, and a
        # restarted group then reads the previous attempt's process-group keys (pytorch#135712:
        # "connectFullMesh ... Connection refused" after --max-restarts). Each round gets its own
        # store without sharing (docs/fault_tolerance.md).
        env.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    env.update(plan.env)
    return env


def run_local(plan: LaunchPlan, max_restarts: int = 0) -> int:
    """Run to completion in the foreground, output streamed; returns the exit code."""
    return subprocess.run(local_command(plan, max_restarts), cwd=plan.workdir, env=local_env(plan)).returncode
