"""TEST-ONLY faults of one rank, for rehearsals of the hang watchdog and the straggler report.

``train.fault.inject_slow_rank=R`` + ``inject_delay_s=D``: rank R burns D seconds of CPU
at the start of every step: a slower device, as the straggler report measures it (CPU
time; a sleep would cost no CPU and look like waiting).

``train.fault.inject_hang_rank=R`` + ``inject_hang_step=S``: rank R stops itself with
SIGSTOP when step S begins, as an operator's ``kill -STOP`` would; it never resumes, and
the watchdog of another rank must notice, name it, and exit so the launcher restarts the
group. It fires once per run dir (a marker file under heartbeats/), so the restarted
attempt trains through step S. Before stopping it prints ``FAULT_INJECT {json}`` on stderr
(rank, host, pid, step, time) so a rehearsal can measure the detection latency.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

from omegaconf import DictConfig

from pretrain.train.callback import Callback, TrainerView
from pretrain.train.callbacks.heartbeats import heartbeat_dir


def burn_cpu(seconds: float) -> None:
    """Busy-wait: the CPU time a slow rank would spend."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


class RankFaults(Callback):
    def __init__(self, run_dir: str | Path, rank: int, slow_rank: int, delay_s: float,
                 hang_rank: int, hang_step: int) -> None:
        self.run_dir, self.rank = Path(run_dir), rank
        self.delay_s = delay_s if rank == slow_rank else 0.0
        self.hang_step = hang_step if rank == hang_rank else 0

    def before_step(self, trainer: TrainerView, step: int) -> None:
        if self.delay_s > 0:
            burn_cpu(self.delay_s)
        if self.hang_step and step == self.hang_step:
            self._freeze(step)

    def _freeze(self, step: int) -> None:
        marker = heartbeat_dir(self.run_dir) / "injected-hang"
        marker.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            return  # fired in an earlier attempt of this run
        print("FAULT_INJECT " + json.dumps({"kind": "hang", "rank": self.rank, "host": socket.gethostname(),
                                            "pid": os.getpid(), "step": step, "time": time.time()}),
              file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)


def rank_faults_from(cfg: DictConfig, rank: int) -> RankFaults | None:
    f = cfg.train.fault
    slow = f.inject_slow_rank >= 0 and f.inject_delay_s > 0
    hang = f.inject_hang_rank >= 0 and f.inject_hang_step > 0
    if not (slow or hang):
        return None
    return RankFaults(cfg.run_dir, rank, f.inject_slow_rank, f.inject_delay_s, f.inject_hang_rank,
                      f.inject_hang_step)
