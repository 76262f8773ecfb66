"""What each srun task runs: the stage command, plus the requeue decision.

Why a wrapper and not the command itself: ``--signal=USR1@N`` is delivered to
every process of the job step, and SIGUSR1's default action is to terminate.
torchrun does not handle SIGUSR1, so without care it would die before the
trainer could save. The wrapper therefore starts its child with SIGUSR1
*ignored* (an ignored disposition survives fork/exec, so torchrun and the
workers it spawns inherit it); the trainer re-enables it with
:func:`launch.preemption.install_preemption_handler`. The wrapper itself
records that the signal came, waits for the child, and requeues the job when
the child stopped early (see :func:`should_requeue`).

In ``per_gpu`` task layout there is no torchrun: every srun task is one rank,
and the wrapper derives the torch.distributed variables from Slurm's.

Usage (written into the sbatch script by :mod:`launch.slurm`)::

    python -m launch.node_entry [--per-gpu] -- COMMAND...
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from launch.preemption import PREEMPTED_EXIT_CODE, PREEMPTION_SIGNAL
from launch.rendezvous import torch_env_for_slurm_task


def should_requeue(child_returncode: int, signal_received: bool) -> bool:
    """Requeue when the trainer said so, or when it stopped non-zero after the warning.

    torchrun reports any failed worker as exit code 1, so behind torchrun the
    trainer's PREEMPTED_EXIT_CODE is not visible; "warning received and the
    child did not finish cleanly" covers that case. A child that exits 0 after
    the warning finished its work: no requeue.
    """
    if child_returncode == PREEMPTED_EXIT_CODE:
        return True
    return signal_received and child_returncode != 0


def requeue_this_job() -> None:
    """Ask Slurm to put this job back in the queue (same job id, SLURM_RESTART_COUNT + 1)."""
    job_id = os.environ["SLURM_JOB_ID"]  # an array task has its own job id too
    print(f"[launch.node_entry] requeueing Slurm job {job_id}", flush=True)
    subprocess.run(["scontrol", "requeue", job_id], check=True)


def run(command: list[str], per_gpu: bool) -> int:
    signal_received = False

    def _note_signal(signum, _frame) -> None:
        nonlocal signal_received
        signal_received = True
        print(f"[launch.node_entry] got signal {signum}: the trainer saves and stops", flush=True)

    signal.signal(PREEMPTION_SIGNAL, _note_signal)
    env = dict(os.environ)
    if per_gpu:
        env.update(torch_env_for_slurm_task(os.environ))

    def _ignore_preemption_signal() -> None:  # runs in the child between fork and exec
        signal.signal(PREEMPTION_SIGNAL, signal.SIG_IGN)

    child = subprocess.Popen(command, env=env, preexec_fn=_ignore_preemption_signal)
    # Forward SIGTERM/SIGINT so an scancel or Ctrl-C stops the child too.
    for forwarded in (signal.SIGTERM, signal.SIGINT):
        signal.signal(forwarded, lambda signum, _f: child.send_signal(signum))
    while True:
        try:
            returncode = child.wait()
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries, kept for clarity
            time.sleep(0.1)
    first_task = os.environ.get("SLURM_PROCID", "0") == "0"
    if "SLURM_JOB_ID" in os.environ and should_requeue(returncode, signal_received):
        if first_task:
            requeue_this_job()
        return 0
    return returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-gpu", action="store_true",
                        help="this task is one rank: set RANK/WORLD_SIZE/LOCAL_RANK from Slurm")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")
    return run(command, per_gpu=args.per_gpu)


if __name__ == "__main__":
    sys.exit(main())
