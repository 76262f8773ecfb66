"""``train.fault.hang_timeout_s``: notice a hung run in seconds-to-minutes, name the rank, exit for a restart.

A rank frozen by SIGSTOP (or a collective that never returns) leaves every other rank
blocked inside a collective; without a watchdog the run waits for the process group's
timeout (it was 30 minutes) and then dies naming nobody. Here a thread in every rank
watches its own main thread: when the step has not moved for ``hang_timeout_s``
(``slow_timeout_s`` during start-up, the first step of a process, and the after-step work:
evaluation and checkpoint saves), it reads the heartbeat files
(:mod:`pretrain.train.callbacks.heartbeats`) to name the rank(s) at fault with host and
pid, prints one ``HANG {json}`` line on stderr, appends the same JSON as a ``hang`` row to
metrics.jsonl (the first rank to detect it in an attempt writes it), and exits the process
with :data:`HANG_EXIT_CODE`. torchrun's agent sees a worker fail and, with
``--max-restarts``, stops the group and starts it again; the trainer resumes from
``checkpoints/latest``.

A frozen rank on the *same host* (same parent: the same torchrun agent) is SIGKILLed
before the exit: it cannot do anything useful, and a stopped process ignores the agent's
SIGTERM, so the agent would wait its 30 s grace period before its own SIGKILL.

Why not nvidia-resiliency-ext: docs/fault_tolerance.md.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from pretrain.train.callback import Callback, StepOutcome, TrainerView
from pretrain.train.callbacks.heartbeats import (Heartbeat, attempt_id, exit_then_kill, heartbeat_dir,
                                                 read_heartbeats, suspects, write_heartbeat)
from pretrain.train.monitor import METRICS, append_jsonl

# Outside sysexits' 64-78 (75 is PREEMPTED_EXIT_CODE: saved and requeue) and the shell's
# 124/128+n: a launcher or a test can tell "the watchdog saw a hang" from every other exit.
HANG_EXIT_CODE = 79

SLOW_PHASES = ("start", "first_step", "after_step", "end")


class HangWatchdog:
    """The watchdog thread of one rank; the main thread reports progress through :meth:`progress`."""

    def __init__(self, run_dir: str | Path, rank: int, world_size: int, hang_timeout_s: float,
                 slow_timeout_s: float) -> None:
        self.run_dir, self.rank, self.world_size = Path(run_dir), rank, world_size
        self.hang_timeout_s, self.slow_timeout_s = hang_timeout_s, slow_timeout_s
        # a live thread rewrites its heartbeat every poll; one silent for half the timeout is frozen
        self.poll_s = max(0.2, min(5.0, hang_timeout_s / 4))
        self.frozen_after_s = max(2 * self.poll_s, hang_timeout_s / 2)
        self.host, self.pid, self.attempt = socket.gethostname(), os.getpid(), attempt_id()
        self.step, self.phase, self.progress_time = 0, "start", time.time()
        self._stop = threading.Event()
        self._moved = threading.Event()   # set by progress(): the thread rewrites the heartbeat at once
        self._thread = threading.Thread(target=self._watch, name="hang-watchdog", daemon=True)
        self._write_failed = False

    def start(self) -> "HangWatchdog":
        if self.rank == 0:
            # an earlier launch's one-row-per-attempt markers (torchrun's run id is "none" unless
            # set, so attempts of two launches can share a name). Nothing can fire before every
            # rank has finished its first step, long after this.
            for old in heartbeat_dir(self.run_dir).glob("hang-*"):
                old.unlink(missing_ok=True)
        self._beat()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._moved.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2 * self.poll_s)

    def progress(self, step: int, phase: str) -> None:
        """The main thread moved on (a new step, or into a slow phase); restarts the clock."""
        self.step, self.phase, self.progress_time = step, phase, time.time()
        self._moved.set()

    def timeout_s(self) -> float:
        return self.slow_timeout_s if self.phase in SLOW_PHASES else self.hang_timeout_s

    def _beat(self) -> None:
        beat = Heartbeat(self.rank, self.host, self.pid, self.attempt, self.step, self.phase,
                         self.progress_time, time.time())
        try:
            write_heartbeat(self.run_dir, beat)
        except OSError as err:  # a full or flaky disk must not kill training; the check below still runs
            if not self._write_failed:
                print(f"warning: rank {self.rank}: heartbeat not written ({err})", file=sys.stderr, flush=True)
            self._write_failed = True

    def _watch(self) -> None:
        # every poll, and right after the main thread moves (off its critical path: the loop only
        # sets an event), so a rank frozen early in a step still shows that step
        while True:
            self._moved.wait(self.poll_s)
            self._moved.clear()
            if self._stop.is_set():
                return
            self._beat()
            stalled = time.time() - self.progress_time
            if stalled > self.timeout_s() and not self._stop.is_set():
                self._fire(stalled)

    def report(self, stalled: float) -> dict[str, Any]:
        """The machine-readable hang record (the ``hang`` row and the ``HANG`` stderr line)."""
        now = time.time()
        beats = read_heartbeats(self.run_dir, self.world_size)
        kind, ranks = suspects(beats, now, self.frozen_after_s)
        named = []
        for r in ranks:
            b = beats[r]
            named.append({"rank": r, "host": b.host if b else None, "pid": b.pid if b else None,
                          "step": b.step if b else None, "phase": b.phase if b else None,
                          "last_beat_age_s": round(now - b.beat_time, 2) if b else None})
        return {"event": "hang", "step": self.step, "time": now, "kind": kind, "ranks": named,
                "detected_by": {"rank": self.rank, "host": self.host, "pid": self.pid},
                "phase": self.phase, "timeout_s": self.timeout_s(), "detected_after_s": round(stalled, 2),
                "attempt": self.attempt, "exit_code": HANG_EXIT_CODE}

    def _fire(self, stalled: float) -> None:
        row = self.report(stalled)
        print("HANG " + json.dumps(row), file=sys.stderr, flush=True)
        try:
            if self._claim_row():
                append_jsonl(self.run_dir / METRICS, row)
        except OSError as err:
            print(f"warning: the hang row was not written ({err})", file=sys.stderr, flush=True)
        sys.stderr.flush()
        sys.stdout.flush()
        frozen = [(r["pid"], r["host"]) for r in row["ranks"]] if row["kind"] == "frozen" else []
        exit_then_kill(frozen, self.host, HANG_EXIT_CODE)

    def _claim_row(self) -> bool:
        """One ``hang`` row per attempt: the first rank to create the marker writes it."""
        marker = heartbeat_dir(self.run_dir) / f"hang-{self.attempt.replace('/', '-')}"
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return True
        except FileExistsError:
            return False


def watchdog_from(cfg: DictConfig) -> HangWatchdog | None:
    """Started before the process group and the model (None: ``train.fault.hang_timeout_s=0``)."""
    f = cfg.train.fault
    if not f.hang_timeout_s:
        return None
    return HangWatchdog(cfg.run_dir, int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                        float(f.hang_timeout_s), float(f.slow_timeout_s)).start()


class HangWatchdogCallback(Callback):
    """Tells the watchdog where the loop is. First in the callback list: its ``after_step``
    switches to the slow timeout before the evaluation and checkpoint callbacks run."""

    def __init__(self, watchdog: HangWatchdog) -> None:
        self.watchdog = watchdog
        self.steps_done = 0

    def on_start(self, trainer: TrainerView) -> None:
        self.watchdog.progress(trainer.progress.iteration, "start")

    def before_step(self, trainer: TrainerView, step: int) -> None:
        self.watchdog.progress(step, "step" if self.steps_done else "first_step")

    def after_step(self, trainer: TrainerView, outcome: StepOutcome) -> None:
        self.steps_done += 1
        self.watchdog.progress(outcome.step, "after_step")

    def on_end(self, trainer: TrainerView) -> None:
        self.watchdog.progress(trainer.progress.iteration, "end")
