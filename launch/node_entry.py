"""What each srun task runs: the stage command, plus the requeue decision.

Why a wrapper and not the command itself: ``--signal=USR1@N`` is delivered to
every process of the job step, and SIGUSR1's default action is to terminate.
torchrun does not handle SIGUSR1, so without care it would die before the
trainer could save. The wrapper therefore starts its child with SIGUSR1
*ignored* (an ignored disposition survives fork/exec, so torchrun and the
workers it spawns inherit it); the trainer re-enables it with
:func:`pretrain.preemption.install_preemption_handler`. The wrapper itself
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

from pretrain.preemption import PREEMPTED_EXIT_CODE, PREEMPTION_SIGNAL
from launch.rendezvous import torch_env_for_slurm_task

REFORWARD_INTERVAL_S = 10.0


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


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # exited while we looked
        children.setdefault(parent, []).append(int(entry))
    return children.get(pid, [])


def forward_signal(signum: int, child_pid: int, behind_torchrun: bool) -> None:
    """Deliver ``signum`` to the ranks: torchrun's workers, or the child itself (per_gpu).

    Slurm's time-limit warning (``--signal=USR1@N``) reaches only the task's
    process group, and torchrun starts its workers in new sessions: without
    forwarding, the trainer never hears it (found on a real Slurm). Only the
    ranks get it, not their helper processes: a spawned helper (e.g. an async
    checkpoint writer) has the default disposition and would be killed.
    ``scancel --signal=USR1`` reaches every process of the step instead; the
    trainer's flag is idempotent, so receiving both is harmless.
    """
    for pid in (children_of(child_pid) if behind_torchrun else [child_pid]):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def run(command: list[str], per_gpu: bool) -> int:
    signal_received = False
    child: subprocess.Popen | None = None

    def _note_signal(signum, _frame) -> None:
        nonlocal signal_received
        signal_received = True
        print(f"[launch.node_entry] got signal {signum}: forwarding it, the trainer saves and stops", flush=True)
        if child is not None:
            forward_signal(signum, child.pid, behind_torchrun="torch.distributed.run" in command)

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
    behind_torchrun = "torch.distributed.run" in command
    while True:
        try:
            returncode = child.wait(timeout=REFORWARD_INTERVAL_S)
            break
        except subprocess.TimeoutExpired:
            # The warning can come before the trainer installed its handler (ranks still
            # importing, SIGUSR1 still ignored): repeat it until the child stops.
            if signal_received:
                forward_signal(PREEMPTION_SIGNAL, child.pid, behind_torchrun)
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
