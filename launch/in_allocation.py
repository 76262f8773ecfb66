"""Run a stage from inside a Slurm allocation that submitit created (Hydra sweeps as job arrays).

With ``hydra/launcher=slurm_array`` the launcher's task function is executed by
submitit on the compute nodes, one task per node, instead of writing an sbatch
script. This module does there what the sbatch script's srun line does
(:mod:`launch.slurm`): rendezvous at the first host of the node list with a
port from the job id, torchrun on every node for distributed stages, and the
same preemption wrapper (:func:`launch.node_entry.run`), whose handler replaces
submitit's so the job is requeued only after the trainer saved.
"""

from __future__ import annotations

import os

from launch.node_entry import run as run_with_requeue
from launch.plan import LaunchPlan, stage_command
from launch.rendezvous import first_host, port_for_job


def inside_submitit_slurm_job() -> bool:
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and "SLURM_JOB_ID" in os.environ


def run_in_allocation(plan: LaunchPlan) -> int:
    os.environ.update(plan.env)
    os.environ.setdefault("MASTER_ADDR", first_host(os.environ["SLURM_JOB_NODELIST"]))
    os.environ.setdefault("MASTER_PORT", str(port_for_job(int(os.environ["SLURM_JOB_ID"]))))
    if not plan.stage.distributed:
        if os.environ.get("SLURM_PROCID", "0") != "0":
            return 0  # single-process stages run on the first task only
        return run_with_requeue(stage_command(plan), per_gpu=False)
    command = [plan.python, "-m", "torch.distributed.run", f"--nnodes={os.environ.get('SLURM_NNODES', '1')}",
               f"--nproc_per_node={plan.procs_per_node}", "--rdzv_backend=c10d",
               f"--rdzv_endpoint={os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
               f"--rdzv_id={os.environ['SLURM_JOB_ID']}", "-m", plan.stage.module, *plan.stage_args]
    return run_with_requeue(command, per_gpu=False)
