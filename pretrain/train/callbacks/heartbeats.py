"""Per-rank heartbeat files: how a rank that is waiting in a collective names the rank it waits for.

Every rank's watchdog thread (:mod:`pretrain.train.callbacks.hang_watchdog`) rewrites
``<run_dir>/heartbeats/rank<R>.json`` every few seconds with what the main thread last
reported (step, phase, when it got there) and when the thread itself last ran. The two
times tell the cases apart:

* a rank whose *thread* stopped writing (``beat_time`` old) is frozen as a whole process:
  SIGSTOP, a node that stopped scheduling it, a kernel (D-state) wait, a crash the agent has
  not yet seen. Its peers are merely waiting for it.
* a rank whose thread still beats but whose step is behind the others' is stuck (or slow)
  before the collective the others wait in.
* every thread beating at the same step: the collective itself does not return (a network
  fault); every rank is named.

The files live in the run dir, which the checkpoints already require to be shared by every
node, so a rank on one host can name a rank on another without another collective (the
process group is what is hung). Each file is replaced atomically (temp file + rename).
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HEARTBEAT_DIR = "heartbeats"


@dataclass
class Heartbeat:
    rank: int
    host: str
    pid: int
    attempt: str        # torchrun's run id and this round's rendezvous address: a file from an earlier attempt is not a peer
    step: int           # the 1-based step the main thread is in (or last finished, phase "after_step")
    phase: str          # start | step | after_step | end
    progress_time: float  # time.time() when the main thread entered this step/phase
    beat_time: float    # time.time() of this write: the watchdog thread is alive

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def attempt_id() -> str:
    """``<TORCHELASTIC_RUN_ID>/<MASTER_ADDR>:<MASTER_PORT>`` (``local/...`` outside torchrun): the same
    on every rank of one attempt, different after a restart.

    Not torchrun's ``TORCHELASTIC_RESTART_COUNT``: it counts per agent, so after one node's
    workers failed it reads 1 there and 0 on the other nodes (measured in the rehearsal), and
    each node took the other's heartbeats for a stale attempt's, naming healthy ranks. The
    rendezvous address is agreed by all agents each round; with a store per round
    (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, set by our launchers whenever restarts are on)
    the port is a fresh one each time.
    """
    endpoint = f"{os.environ.get('MASTER_ADDR', '')}:{os.environ.get('MASTER_PORT', '')}"
    return f"{os.environ.get('TORCHELASTIC_RUN_ID', 'local')}/{endpoint}"


def heartbeat_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / HEARTBEAT_DIR


def write_heartbeat(run_dir: str | Path, beat: Heartbeat) -> None:
    directory = heartbeat_dir(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"rank{beat.rank}.json"
    tmp = directory / f".rank{beat.rank}.json.tmp"
    tmp.write_text(beat.to_json())
    os.replace(tmp, target)


def read_heartbeats(run_dir: str | Path, world_size: int) -> dict[int, Heartbeat | None]:
    """Every rank's latest heartbeat (None: no file, unreadable, or from another attempt)."""
    here = attempt_id()
    beats: dict[int, Heartbeat | None] = {}
    for rank in range(world_size):
        try:
            beat = Heartbeat(**json.loads((heartbeat_dir(run_dir) / f"rank{rank}.json").read_text()))
        except (OSError, ValueError, TypeError):
            beat = None
        beats[rank] = beat if beat is not None and beat.attempt == here else None
    return beats


def suspects(beats: dict[int, Heartbeat | None], now: float, frozen_after_s: float) -> tuple[str, list[int]]:
    """(kind, ranks) a hang is blamed on, from the heartbeats alone (see the module docstring).

    ``frozen``: ranks with no heartbeat of this attempt or none for ``frozen_after_s``;
    ``behind``: every thread alive, these ranks at a lower step (or an earlier phase) than the rest;
    ``collective``: every rank alive at the same point: all are named.
    """
    frozen = [r for r, b in beats.items() if b is None or now - b.beat_time > frozen_after_s]
    if frozen:
        return "frozen", frozen
    order = {"start": 0, "first_step": 1, "step": 1, "after_step": 2, "end": 3}
    position = {r: (b.step, order.get(b.phase, 1)) for r, b in beats.items() if b is not None}
    lowest = min(position.values())
    behind = [r for r, p in position.items() if p == lowest]
    if len(behind) < len(position):
        return "behind", behind
    return "collective", sorted(position)


def kill_if_sibling(pid: int | None, host: str | None, my_host: str, agent: int | None = None) -> bool:
    """SIGKILL ``pid`` if it runs on this host under the same parent (our torchrun agent;
    ``agent`` names it for a caller that has been re-parented since)."""
    if pid is None or host != my_host or pid == os.getpid():
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        parent = int(stat.rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return False
    if parent != (os.getppid() if agent is None else agent):
        return False
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except OSError:
        return False


def exit_then_kill(frozen: list[tuple[int | None, str | None]], my_host: str, code: int,
                   wait_s: float = 2.0, grace_s: float = 1.0) -> None:
    """Exit with ``code``, *then* SIGKILL the frozen siblings (a stopped process ignores the
    agent's SIGTERM, so without the kill the restart waits out the agent's shutdown timeout).

    The order matters: torchrun reports the first failure it observes, and it stamps failures
    in whole seconds, so two deaths seen in one poll tie. Killing first raced with the agent's
    poll, and the restart was blamed on the sibling's SIGKILL (-9) instead of this rank's hang
    exit. So a forked child waits until this process is gone (it is re-parented) and then
    ``grace_s`` more, ten of the agent's 0.1 s monitor polls (room for an agent starved of CPU
    on a busy host), before it kills; ``wait_s`` bounds the wait should this process outlive it.
    """
    me, agent = os.getpid(), os.getppid()
    if frozen and os.fork() == 0:  # the child: no printing, logging or imports (locks of threads left behind)
        try:
            deadline = time.monotonic() + wait_s
            while os.getppid() == me and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(grace_s)
            for pid, host in frozen:
                kill_if_sibling(pid, host, my_host, agent=agent)
        finally:
            os._exit(0)
    os._exit(code)
