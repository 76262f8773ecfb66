"""Watch a running job from outside: which steps appear in metrics.jsonl when, and which rank
processes carry it.

Why watch from outside rather than read the trainer's own timings afterwards: a resume
rewrites metrics.jsonl (the rows after the checkpoint are dropped and trained again), and a
SIGKILLed rank logs nothing about its death. The watcher keeps every row it ever saw with
the wall time it first saw it, so the timeline shows the lost steps and the re-trained ones.
A row is identified by (step, elapsed_s): a re-trained step has the same number but a new
elapsed time.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launch.rehearsal.ranks import RankProcess, rank_processes


@dataclass
class Attempt:
    """One set of rank processes: the first start, then one per in-allocation restart or requeue."""

    index: int
    ranks: list[RankProcess]
    first_step: int | None = None
    first_step_time: float | None = None

    @property
    def started_at(self) -> float:
        return min(r.started_at for r in self.ranks)

    @property
    def pids(self) -> set[int]:
        return {r.pid for r in self.ranks}


@dataclass
class Watcher:
    run_dir: Path
    job_id: str
    world_size: int
    steps: list[dict[str, Any]] = field(default_factory=list)    # {"step", "t", "attempt", "step_time_s"}
    events: list[dict[str, Any]] = field(default_factory=list)   # start/resume/checkpoint rows, as logged
    attempts: list[Attempt] = field(default_factory=list)
    _seen: set = field(default_factory=set)
    _hosts: dict[int, str] = field(default_factory=dict)

    @property
    def last_step(self) -> int:
        return self.steps[-1]["step"] if self.steps else 0

    def checkpoints(self) -> list[int]:
        """Steps whose checkpoint is complete on disk (the ``checkpoint`` events logged so far)."""
        return [e["step"] for e in self.events if e.get("event") == "checkpoint"]

    def poll(self) -> None:
        now = time.time()
        self._poll_ranks()
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue   # a line being written
            key = (row.get("event"), row.get("step"), row.get("elapsed_s"), row.get("time"))
            if key in self._seen:
                continue
            self._seen.add(key)
            attempt = self.attempts[-1].index if self.attempts else 0
            if row.get("event") is None and "loss" in row:
                self.steps.append({"step": row["step"], "t": now, "attempt": attempt,
                                   "step_time_s": row.get("step_time_s")})
                current = self.attempts[-1] if self.attempts else None
                if current is not None and current.first_step is None:
                    current.first_step, current.first_step_time = row["step"], now
            elif row.get("event") is not None:
                self.events.append({**row, "seen_at": now, "attempt": attempt})

    def _poll_ranks(self) -> None:
        live = rank_processes(self.job_id, self._hosts)
        if len(live) != self.world_size:
            return   # starting or dying: wait for the whole set
        pids = {r.pid for r in live}
        if not self.attempts or not (pids & self.attempts[-1].pids):
            self.attempts.append(Attempt(index=len(self.attempts), ranks=live))

    def live_ranks(self) -> list[RankProcess]:
        return rank_processes(self.job_id, self._hosts)
