"""Where the ranks of a Slurm job meet: derived from the job itself, not configured.

The first host of the allocation is the rendezvous host on every node (all
nodes compute the same answer from ``SLURM_JOB_NODELIST``), and the port is
derived from the job id so two jobs sharing a node do not collide. The shell
form goes into the sbatch script; the Python form is used by
:mod:`launch.node_entry` in the one-task-per-GPU layout.
"""

from __future__ import annotations

import subprocess
from typing import Mapping

PORT_BASE = 20000
PORT_SPAN = 20000  # ports 20000-39999: above the well-known range, below Linux's ephemeral range

MASTER_ADDR_SHELL = 'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)'
MASTER_PORT_SHELL = f"MASTER_PORT=$(( {PORT_BASE} + SLURM_JOB_ID % {PORT_SPAN} ))"


def port_for_job(job_id: int) -> int:
    return PORT_BASE + job_id % PORT_SPAN


def first_host(nodelist: str) -> str:
    """Expand a Slurm node list (``gpu[001-004]``) with scontrol and take the first host."""
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist],
                         check=True, capture_output=True, text=True).stdout.split()
    if not out:
        raise RuntimeError(f"scontrol show hostnames {nodelist!r} returned no host")
    return out[0]


def torch_env_for_slurm_task(env: Mapping[str, str]) -> dict[str, str]:
    """torch.distributed variables for one srun task that is one rank (per_gpu layout)."""
    master_addr = env.get("MASTER_ADDR") or first_host(env["SLURM_JOB_NODELIST"])
    master_port = env.get("MASTER_PORT") or str(port_for_job(int(env["SLURM_JOB_ID"])))
    return {
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": master_port,
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": env["SLURM_NTASKS"],
        "LOCAL_RANK": env["SLURM_LOCALID"],
        "LOCAL_WORLD_SIZE": env.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0],
        "NODE_RANK": env.get("SLURM_NODEID", "0"),
    }
