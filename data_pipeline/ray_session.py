"""The local Ray cluster a pipeline run starts is the run's own: nothing of it outlives the driver.

Why: when the driver is SIGKILLed (OOM killer, ``kill -9``, a lost node), Ray 2.x kernel-fate-shares
only the processes the driver started itself (gcs_server, raylet, dashboard: ``PR_SET_PDEATHSIG``).
The raylet's agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) notice the raylet is gone, then
block for a minute or more trying to tell the dead GCS, and linger as orphans of init.

Two mechanisms, both keyed by the Ray session directory (every Ray process of a session holds its log
files there open, and names it on its command line), so a Ray cluster of another run or user on the
same machine is never touched:

1. A reaper: ``python -m data_pipeline.ray_session DRIVER_PID SESSION_DIR`` started by the driver in a
   session of its own (so a signal to the driver's process group does not take it too), with its stdin a
   pipe from the driver. The kernel closes the pipe when the driver dies however it dies; the reaper
   then stops every process of the session (SIGTERM, then SIGKILL) and exits. This is the design of
   Ray's own ``ray_process_reaper``, except that Ray's kills the whole process group, which for a CLI run
   is the user's shell job.
2. A record, ``OUTPUT/_work/ray_session.json`` (driver pid and start time, session dir), removed on a
   clean exit. A run that finds one whose driver is gone (reaper killed too, machine rebooted) stops
   what is left of that session before starting its own, and says so.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

RECORD = "ray_session.json"
GRACE_SECONDS = 3.0


def session_processes(session_dir: str) -> list[psutil.Process]:
    """Live processes of a Ray session: those naming ``session_dir`` on their command line or holding a
    file under it open. The caller and its parent are never included."""
    if "session_" not in Path(session_dir).name or not Path(session_dir).is_absolute():
        raise ValueError(f"not a Ray session directory: {session_dir!r}")  # never match every process
    prefix = session_dir.rstrip("/") + "/"
    mine = {os.getpid(), os.getppid()}
    found = []
    for proc in psutil.process_iter():
        if proc.pid in mine:
            continue
        try:
            if any(prefix in arg for arg in proc.cmdline()) or any(
                    f.path.startswith(prefix) for f in proc.open_files()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def stop_session(session_dir: str) -> list[str]:
    """SIGTERM every process of the session, SIGKILL those still there after GRACE_SECONDS; return
    ``name(pid)`` of each process found."""
    procs = session_processes(session_dir)
    names = []
    for proc in procs:
        try:
            names.append(f"{proc.name()}({proc.pid})")
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=GRACE_SECONDS)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=GRACE_SECONDS)
    return names


def _session_dir() -> str:
    """The session directory of the Ray this process has just started (no public API names it)."""
    import ray

    return str(ray._private.worker.global_worker.node.get_session_dir_path())


def _driver_alive(pid: int, create_time: float) -> bool:
    try:
        return abs(psutil.Process(pid).create_time() - create_time) < 1.0  # not a reused pid
    except psutil.NoSuchProcess:
        return False


def sweep_stale_session(work: Path) -> list[str]:
    """Stop what is left of the Ray session a killed earlier run recorded in ``work``; return what was stopped.

    A record whose driver is still alive belongs to a run in progress on the same output: it is left
    alone (that run's record is then overwritten; two drivers on one output are not supported anyway).
    """
    path = work / RECORD
    try:
        rec = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        path.unlink(missing_ok=True)
        return []
    if _driver_alive(int(rec["driver_pid"]), float(rec["driver_create_time"])):
        return []
    stopped = stop_session(str(rec["session_dir"]))
    if stopped:
        msg = (f"stopped {len(stopped)} Ray process(es) left by an earlier run of this output whose driver "
               f"(pid {rec['driver_pid']}) died: {', '.join(stopped)} (session {rec['session_dir']})")
        log.warning(msg)
        print(f"warning: {msg}", file=sys.stderr, flush=True)
    path.unlink(missing_ok=True)
    return stopped


class OwnedSession:
    """The record and the reaper of the Ray cluster this driver started; ``close`` after ``ray.shutdown``."""

    def __init__(self, work: Path) -> None:
        self.record = work / RECORD
        self.session_dir = _session_dir()
        me = psutil.Process()
        tmp = self.record.with_name(f".{RECORD}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"driver_pid": me.pid, "driver_create_time": me.create_time(),
                                   "session_dir": self.session_dir}) + "\n")
        os.replace(tmp, self.record)
        # stdin: the pipe whose end-of-file is the driver's death; start_new_session: not in the
        # driver's process group, so `kill -- -PGID` of the CLI job does not take the reaper with it.
        self.reaper = subprocess.Popen([sys.executable, "-m", "data_pipeline.ray_session", str(me.pid),
                                        self.session_dir], stdin=subprocess.PIPE, start_new_session=True)

    def close(self) -> None:
        """After a clean ``ray.shutdown``: the reaper stops any straggler and exits; the record goes."""
        if self.reaper.stdin is not None:
            self.reaper.stdin.close()
        try:
            self.reaper.wait(timeout=2 * GRACE_SECONDS + 5)
        except subprocess.TimeoutExpired:
            self.reaper.kill()
        self.record.unlink(missing_ok=True)


def _reap(argv: list[str]) -> None:
    """Reaper body: wait for EOF on stdin (the driver is gone), then stop the session's processes."""
    driver_pid, session_dir = int(argv[0]), argv[1]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C of the terminal is the driver's to handle
    while sys.stdin.buffer.read(4096):
        pass
    time.sleep(0.2)  # a clean shutdown closes the pipe after ray.shutdown: usually nothing is left
    stopped = stop_session(session_dir)
    if stopped:
        print(f"data_pipeline reaper: driver pid {driver_pid} is gone; stopped {len(stopped)} Ray process(es) "
              f"of its session {session_dir}: {', '.join(stopped)}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    _reap(sys.argv[1:])
