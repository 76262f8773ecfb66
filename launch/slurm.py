"""Write the sbatch script for a plan, and submit it with ``sbatch``.

Why a plain sbatch script rather than a pickled submitit function: the script
*is* the job. A dry run writes exactly what would be submitted, an operator can
read, diff and resubmit it by hand, and requeue restarts it from the top with
the same command (the trainer resumes from its latest checkpoint). submitit is
still used for Hydra multirun sweeps, which go out as job arrays (see
configs/hydra/launcher/slurm_array.yaml and docs/launch.md).

Layout of the job:

* per_node: ``srun --ntasks-per-node=1`` starts :mod:`launch.node_entry` on every
  node, which runs torchrun with a c10d rendezvous at the first host of the
  node list, port derived from the job id.
* per_gpu: ``srun --ntasks-per-node=<ranks per node>`` starts one
  :mod:`launch.node_entry --per-gpu` per rank, which sets RANK/WORLD_SIZE/... from
  Slurm's variables and runs the stage directly.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from pathlib import Path

from omegaconf import DictConfig

from launch.plan import LaunchPlan, max_restarts, stage_command
from launch.rendezvous import MASTER_ADDR_SHELL, MASTER_PORT_SHELL
from launch.stages import LaunchConfigError


def _q(args: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in args)


def sbatch_directives(plan: LaunchPlan, cluster: DictConfig, job_name: str) -> list[str]:
    slurm = cluster.slurm
    gpus = int(cluster.gpus_per_node)
    tasks_per_node = plan.procs_per_node if plan.task_layout == "per_gpu" else 1
    if gpus:
        cpus_per_task = int(cluster.cpus_per_gpu) * (1 if plan.task_layout == "per_gpu" else gpus)
    else:
        cpus_per_task = max(1, int(cluster.cpus_per_node) // tasks_per_node)
    log_dir = plan.launch_dir / "slurm"
    lines = [
        f"--job-name={job_name}",
        f"--nodes={plan.nodes}",
        f"--ntasks-per-node={tasks_per_node}",
        f"--cpus-per-task={cpus_per_task}",
        f"--mem={int(cluster.mem_gb_per_node)}G",
        f"--time={int(slurm.time_min)}",
    ]
    if gpus and plan.stage.distributed:  # data, tokenizer and planner stages use CPUs only
        lines.append(f"--gpus-per-node={gpus}")
    for key in ("partition", "account", "qos", "constraint"):
        if slurm.get(key):
            lines.append(f"--{key}={slurm[key]}")
    if slurm.get("exclusive"):
        lines.append("--exclusive")
    lines += [
        # Early warning before the time limit; the trainer saves, the wrapper requeues.
        f"--signal=USR1@{int(slurm.signal_delay_s)}",
        "--requeue",
        # A requeued job appends to the same log instead of overwriting the first attempt.
        "--open-mode=append",
        f"--output={log_dir}/%x-%j.out",
    ]
    return [f"#SBATCH {line}" for line in lines]


def srun_line(plan: LaunchPlan, cluster: DictConfig) -> str:
    slurm = cluster.slurm
    srun = ["srun", "--kill-on-bad-exit=1"]
    if slurm.get("container_image"):  # pyxis/enroot
        srun.append(f"--container-image={slurm.container_image}")
        if slurm.get("container_mounts"):
            srun.append(f"--container-mounts={slurm.container_mounts}")
        srun.append(f"--container-workdir={plan.workdir}")
    entry = [plan.python, "-m", "launch.node_entry"]
    if not plan.stage.distributed:
        return f"{_q(srun + ['--ntasks=1'] + entry)} -- {_q(stage_command(plan))}"
    restarts = max_restarts(plan, cluster)  # checked before the layout branch: per_gpu refuses restarts
    if plan.task_layout == "per_gpu":
        return f"{_q(srun + entry + ['--per-gpu'])} -- {_q(stage_command(plan))}"
    torchrun = (f"{shlex.quote(plan.python)} -m torch.distributed.run"
                f' --nnodes="$SLURM_NNODES" --nproc_per_node={plan.procs_per_node}'
                + (f" --max-restarts={restarts}" if restarts else "") +
                f' --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv_id="$SLURM_JOB_ID"'
                f" -m {shlex.quote(plan.stage.module)} {_q(plan.stage_args)}").rstrip()
    return f"{_q(srun + entry)} -- {torchrun}"


def render_sbatch(plan: LaunchPlan, cluster: DictConfig, job_name: str) -> str:
    env_lines = [f"export {k}={shlex.quote(v)}" for k, v in sorted(plan.env.items())]
    if plan.stage.distributed and plan.task_layout == "per_gpu" or not int(cluster.gpus_per_node):
        env_lines.append('export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"')
    if plan.stage.distributed and plan.task_layout == "per_node" and max_restarts(plan, cluster):
        # Restarted workers must not meet in the store of the attempt before: torchrun's agents share
        # one TCPStore across rendezvous rounds, so the new default process group reads the dead
        # ranks' gloo/NCCL addresses ("Connection refused", seen on the emulated cluster). Opting out
        # of the sharing gives every round a fresh store hosted by its rank 0 (docs/rehearsal.md).
        env_lines.append("export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1")
    body = [
        "#!/bin/bash",
        f"# Written by `python -m launch` for stage {plan.stage_name} on cluster preset {cluster.get('name')}.",
        *sbatch_directives(plan, cluster, job_name),
        "set -euo pipefail",
        "",
        "# Environment from the cluster preset (NCCL/InfiniBand) and the launch config.",
        *env_lines,
        "",
        "# Rendezvous: the first host of the allocation; the port from the job id, so jobs sharing a node differ.",
        f"export {MASTER_ADDR_SHELL}",
        f"export {MASTER_PORT_SHELL}",
        'echo "[launch] job $SLURM_JOB_ID restart ${SLURM_RESTART_COUNT:-0} on $SLURM_JOB_NODELIST,'
        ' rendezvous $MASTER_ADDR:$MASTER_PORT, $(date -u +%FT%TZ)"',
        "",
        f"cd {shlex.quote(str(plan.workdir))}",
        srun_line(plan, cluster),
        "",
    ]
    return "\n".join(body)


def write_sbatch(plan: LaunchPlan, script: str) -> Path:
    path = plan.launch_dir / "slurm" / "job.sbatch"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    return path


def submit(script_path: Path) -> str:
    """``sbatch --parsable``; returns the job id."""
    if shutil.which("sbatch") is None:
        raise RuntimeError("sbatch is not on PATH: run on a Slurm login node, or use cluster=local "
                           "(CI: bash .ci/slurm/setup.sh starts a local Slurm)")
    out = subprocess.run(["sbatch", "--parsable", str(script_path)], check=True,
                         capture_output=True, text=True).stdout.strip()
    return out.split(";")[0]


def job_state(job_id: str) -> str:
    """Current state from squeue, or the final one from scontrol once it left the queue."""
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    for token in out.split():
        if token.startswith("JobState="):
            return token.split("=", 1)[1]
    return "UNKNOWN"


FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def wait_for(job_id: str, poll_s: float = 2.0) -> str:
    while (state := job_state(job_id)) not in FINAL_STATES:
        time.sleep(poll_s)
    return state
