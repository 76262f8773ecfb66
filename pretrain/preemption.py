"""The contract between Slurm's early-warning signal and the training loop.

Slurm is told (``#SBATCH --signal=USR1@N``) to send SIGUSR1 N seconds before the
time limit. A signal handler may run at any bytecode boundary, so it must not
save a checkpoint itself (it could interrupt a collective or a half-written
tensor); it only sets a flag. The trainer polls the flag between steps, saves a
complete checkpoint, and exits with :data:`PREEMPTED_EXIT_CODE`. The per-task
wrapper (:mod:`launch.node_entry`, which imports the constants from here) sees that exit and runs
``scontrol requeue $SLURM_JOB_ID``; the requeued job starts the same command,
and the trainer resumes from ``checkpoints/latest`` with no extra flag.

What the trainer calls, on every rank::

    from pretrain.preemption import install_preemption_handler, PREEMPTED_EXIT_CODE
    preemption = install_preemption_handler()          # once, before the loop
    for iteration in ...:
        train_step(...)
        if preemption.should_save_and_exit_all_ranks():  # collective, every rank
            save_checkpoint(...)                           # updates checkpoints/latest
            preemption.exit_for_requeue()                  # sys.exit(PREEMPTED_EXIT_CODE)

Ranks receive the signal at slightly different times (one per node), so the
decision is agreed with an all-reduce (MAX); otherwise one rank would enter the
collective checkpoint save while another runs the next forward pass, and hang.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import NoReturn, Sequence

# EX_TEMPFAIL from sysexits.h: "temporary failure, the user is invited to retry".
# Distinct from crashes (1), timeouts (124), SIGKILL (137) and SIGTERM (143), so
# the wrapper requeues only jobs that stopped on purpose after saving.
PREEMPTED_EXIT_CODE = 75

# The signal the launcher asks Slurm for (#SBATCH --signal=USR1@N).
PREEMPTION_SIGNAL = signal.SIGUSR1


class PreemptionFlag:
    """Set from a signal handler; read by the training loop between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.received_signal: int | None = None

    def request(self, signum: int | None = None) -> None:
        """Mark that the job must save and stop (also callable directly, e.g. from tests)."""
        self.received_signal = signum
        self._event.set()

    def should_save_and_exit(self) -> bool:
        """This process's view only: True once the signal arrived here."""
        return self._event.is_set()

    def should_save_and_exit_all_ranks(self, group=None) -> bool:
        """True on every rank as soon as any rank got the signal (a collective: call on all ranks).

        Falls back to the local flag when torch.distributed is not initialised.
        """
        local = self.should_save_and_exit()
        try:
            import torch
            import torch.distributed as dist
        except ImportError:  # the launcher itself does not need torch
            return local
        if not (dist.is_available() and dist.is_initialized()):
            return local
        backend = dist.get_backend(group)
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        flag = torch.tensor([1 if local else 0], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        return bool(flag.item())

    @staticmethod
    def exit_for_requeue() -> NoReturn:
        """Leave with the code the wrapper turns into ``scontrol requeue``."""
        sys.stdout.flush()
        sys.stderr.flush()
        sys.exit(PREEMPTED_EXIT_CODE)


_installed: PreemptionFlag | None = None


def install_preemption_handler(signals: Sequence[int] = (PREEMPTION_SIGNAL,)) -> PreemptionFlag:
    """Install the flag-setting handler (idempotent; main thread only, as Python requires)."""
    global _installed
    if _installed is None:
        _installed = PreemptionFlag()
    flag = _installed

    def _handler(signum, _frame) -> None:
        flag.request(signum)

    for signum in signals:
        signal.signal(signum, _handler)
    return flag


def running_under_slurm() -> bool:
    """True inside a Slurm job step (where requeue makes sense)."""
    return "SLURM_JOB_ID" in os.environ
