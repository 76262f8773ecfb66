"""Find the rank processes of a Slurm job on this machine, and where each one runs.

Why /proc and not Slurm: torchrun's workers are grandchildren of the srun task and run
in sessions of their own, so ``scontrol listpids`` shows the node_entry wrappers, not the
ranks. On the emulated cluster every node's processes are visible from the root
namespace; a rank is a process whose environment carries this job's SLURM_JOB_ID and a
torchrun RANK. Its host is read from the UTS namespace it runs in (``nsenter -t PID -u
hostname``), so "ranks on different hosts" is checked on the processes, not on a config.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import asdict, dataclass

_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class RankProcess:
    rank: int
    local_rank: int
    pid: int
    host: str           # hostname in the process's UTS namespace
    slurm_node: str     # SLURMD_NODENAME from its environment
    netns: str          # /proc/PID/ns/net link: distinct per emulated node
    started_at: float   # unix time the process started
    restart_count: int  # TORCHELASTIC_RESTART_COUNT: 0 for the first workers

    def as_dict(self) -> dict:
        return asdict(self)


def _boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    raise RuntimeError("no btime in /proc/stat")


def _environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        raw = f.read()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def _start_time(pid: int, boot: float) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return boot + int(fields[19]) / _CLK_TCK   # field 22 (starttime), counted after the ")"


def _parent_is_torchrun(pid: int) -> bool:
    """Workers are torchrun's children; helpers a rank spawns (an async checkpoint writer)
    inherit RANK too, but their parent is the rank."""
    with open(f"/proc/{pid}/stat") as f:
        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
    with open(f"/proc/{ppid}/cmdline", "rb") as f:
        return b"torch.distributed.run" in f.read()


def _hostname_of(pid: int) -> str:
    out = subprocess.run(["nsenter", "-t", str(pid), "-u", "hostname"], capture_output=True, text=True)
    return out.stdout.strip() or "?"


def rank_processes(job_id: str, hosts: dict[int, str] | None = None) -> list[RankProcess]:
    """The live rank processes of ``job_id``, sorted by rank. ``hosts`` caches pid -> hostname
    (one nsenter per new process, not per poll)."""
    boot = _boot_time()
    found: list[RankProcess] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            env = _environ(pid)
            if env.get("SLURM_JOB_ID") != job_id or "RANK" not in env or "TORCHELASTIC_RUN_ID" not in env:
                continue
            if not _parent_is_torchrun(pid):
                continue
            started = _start_time(pid, boot)
            netns = os.readlink(f"/proc/{pid}/ns/net")
        except (OSError, ValueError):
            continue   # exited, or not ours to read
        if hosts is not None and pid in hosts:
            host = hosts[pid]
        else:
            host = _hostname_of(pid)
            if hosts is not None:
                hosts[pid] = host
        found.append(RankProcess(rank=int(env["RANK"]), local_rank=int(env.get("LOCAL_RANK", -1)), pid=pid,
                                 host=host, slurm_node=env.get("SLURMD_NODENAME", "?"), netns=netns,
                                 started_at=started, restart_count=int(env.get("TORCHELASTIC_RESTART_COUNT", 0))))
    return sorted(found, key=lambda r: r.rank)
