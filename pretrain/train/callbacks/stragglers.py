"""``train.fault.straggler_interval``: every N steps, name the ranks that compute slower than the rest.

In a synchronous run the fast ranks wait for the slowest one inside the collectives, so
the loop's step time is the same everywhere and says nothing about *who* is slow. What
differs is the work a rank does itself: here the process CPU time per step
(``time.process_time``: the main thread, intra-op threads, the data loader in-process),
measured from one ``after_step`` to the next. A rank blocked in a gloo collective sleeps
in a socket read and adds nothing. Every ``straggler_interval`` steps each rank's mean
over the window is gathered in ONE all-gather of one float (the host names are gathered
once, at the start); ranks above ``straggler_factor`` x the median are named (rank, host)
in a ``stragglers`` row of metrics.jsonl and on stdout, and the window's figures go to W&B.

On CUDA the host's CPU time measures host-side work only (data, Python, kernel launches)
and a host thread spinning in a CUDA synchronize counts as busy: GPU-kernel stragglers need
kernel timings (CUPTI, as nvidia-resiliency-ext's straggler detector does), not done here.
"""

from __future__ import annotations

import json
import socket
import statistics
import time
from typing import Sequence

import torch
import torch.distributed as dist

from pretrain.train.callback import Callback, StepOutcome, TrainerView
from pretrain.train.callbacks.metrics import Metrics


def find_stragglers(busy_s: Sequence[float], factor: float) -> tuple[float, list[int]]:
    """(median, ranks with ``busy_s > factor x median``).

    The median is the lower middle value for an even count (``statistics.median_low``):
    in a 2-rank world the slow rank is compared with the other one, not with their mean
    (which no rank could exceed by 2x). A zero median names nobody.
    """
    if not busy_s:
        return 0.0, []
    median = statistics.median_low(busy_s)
    if median <= 0:
        return median, []
    return median, [rank for rank, t in enumerate(busy_s) if t > factor * median]


def _device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class StragglerReport(Callback):
    def __init__(self, interval: int, factor: float, metrics: Metrics) -> None:
        self.interval, self.factor, self.metrics = interval, factor, metrics
        self.hosts: list[str] = []
        self._last = time.process_time()
        self._busy, self._steps = 0.0, 0

    def on_start(self, trainer: TrainerView) -> None:
        hosts: list[str | None] = [None] * dist.get_world_size()
        dist.all_gather_object(hosts, socket.gethostname())   # once per run, not per report
        self.hosts = [str(h) for h in hosts]
        self._last = time.process_time()

    def after_step(self, trainer: TrainerView, outcome: StepOutcome) -> None:
        now = time.process_time()
        self._busy, self._steps, self._last = self._busy + now - self._last, self._steps + 1, now
        iteration = trainer.progress.iteration
        if not outcome.completed or iteration % self.interval != 0:
            return
        mean = torch.tensor([self._busy / self._steps], dtype=torch.float64, device=_device())
        gathered = [torch.zeros_like(mean) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, mean)
        self._busy, self._steps = 0.0, 0
        busy = [float(t.item()) for t in gathered]
        median, slow = find_stragglers(busy, self.factor)
        self.metrics.wandb_log({"stragglers/count": len(slow), "stragglers/median_busy_s": median,
                                "stragglers/max_ratio": max(busy) / median if median > 0 else None},
                               step=iteration)
        if not slow or dist.get_rank() != 0:
            return
        named = [{"rank": r, "host": self.hosts[r], "busy_s": round(busy[r], 4),
                  "ratio": round(busy[r] / median, 2)} for r in slow]
        row = {"window_steps": self.interval, "factor": self.factor, "median_busy_s": round(median, 4),
               "stragglers": named}
        self.metrics.event("stragglers", iteration, **row)
        print("STRAGGLERS " + json.dumps({"step": iteration, **row}), flush=True)
