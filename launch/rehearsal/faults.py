"""Fault kinds the rehearsal can inject, and the record each one leaves.

One function per kind, registered in :data:`FAULT_KINDS`: it receives a
:class:`FaultContext` (the job, its live ranks, the watcher) and does the damage, returning
what it hit. Measuring the recovery is the same for every kind and lives in
:mod:`launch.rehearsal.report`, so adding a kind (SIGSTOP for the hang watchdog, a slow
rank, a node taken down) is one function here plus one line in the registry.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from launch.rehearsal.ranks import RankProcess


@dataclass(frozen=True)
class FaultSpec:
    """``KIND@STEP[:rank=R]`` on the command line: hit after step STEP has completed."""

    kind: str
    after_step: int
    rank: int | None = None

    @classmethod
    def parse(cls, text: str) -> "FaultSpec":
        try:
            kind, rest = text.split("@", 1)
            step, _, opts = rest.partition(":")
            options = dict(o.split("=", 1) for o in opts.split(",") if o)
            spec = cls(kind=kind, after_step=int(step), rank=int(options["rank"]) if "rank" in options else None)
        except (ValueError, KeyError) as err:
            raise ValueError(f"--fault {text!r}: expected KIND@STEP[:rank=R], e.g. sigkill@12:rank=11 ({err})") from None
        if spec.kind not in FAULT_KINDS:
            raise ValueError(f"--fault {text!r}: unknown kind {spec.kind!r}; known: {', '.join(FAULT_KINDS)}")
        return spec


@dataclass
class FaultContext:
    job_id: str
    ranks: list[RankProcess]        # the live ranks when the fault fires
    spec: FaultSpec


@dataclass
class Injected:
    """What a fault kind did: the wall time it struck and what it hit."""

    time: float
    target: dict[str, Any] = field(default_factory=dict)


def _pick_rank(ctx: FaultContext) -> RankProcess:
    if ctx.spec.rank is None:
        return ctx.ranks[-1]          # the last rank: not the one writing metrics.jsonl, not on the rendezvous host
    for r in ctx.ranks:
        if r.rank == ctx.spec.rank:
            return r
    raise ValueError(f"fault {ctx.spec}: rank {ctx.spec.rank} is not among the live ranks "
                     f"{[r.rank for r in ctx.ranks]}")


def sigkill_rank(ctx: FaultContext) -> Injected:
    """SIGKILL one rank: no handler runs, no checkpoint is written; torchrun's agent sees the
    worker die and restarts the workers of every node (cluster.max_restarts)."""
    victim = _pick_rank(ctx)
    os.kill(victim.pid, signal.SIGKILL)
    return Injected(time=time.time(), target={"rank": victim.rank, "pid": victim.pid, "host": victim.host,
                                              "signal": "SIGKILL"})


def node_down(ctx: FaultContext) -> Injected:
    """Take down the node of the target rank: SIGKILL every process in its network namespace
    (slurmd, slurmstepd, torchrun, the ranks), as a power loss would. Slurm stops hearing the
    node, marks it DOWN after SlurmdTimeout, and requeues the job (``--requeue``), which then
    runs on the healthy node and the spare; torchrun cannot help, its peer agent is gone."""
    victim = _pick_rank(ctx)
    netns = f"rh-{victim.slurm_node}"
    pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, check=True).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    return Injected(time=time.time(), target={"rank": victim.rank, "host": victim.host, "node": victim.slurm_node,
                                              "netns": netns, "processes_killed": len(pids)})


def sigstop_rank(ctx: FaultContext) -> Injected:
    """SIGSTOP one rank (found as sigkill finds it, signalled from outside): the process stays
    alive and silent, its peers block in the next collective. Nothing outside the trainer
    notices; the hang watchdog (``train.fault.hang_timeout_s``) of a peer names the frozen rank
    in a ``hang`` row and exits 79, and torchrun restarts the workers in the allocation
    (SIGKILL reaches a stopped process)."""
    victim = _pick_rank(ctx)
    os.kill(victim.pid, signal.SIGSTOP)
    return Injected(time=time.time(), target={"rank": victim.rank, "pid": victim.pid, "host": victim.host,
                                              "signal": "SIGSTOP"})


def slow_rank(ctx: FaultContext) -> Injected:
    """A slow rank: the damage is done by the trainer's test-only knobs passed at submit time
    (:func:`submit_overrides`), so this only records which process carries it. No restart; the
    record is the first ``stragglers`` row that names the rank."""
    victim = _pick_rank(ctx)
    return Injected(time=time.time(), target={"rank": victim.rank, "pid": victim.pid, "host": victim.host,
                                              "knobs": submit_overrides([ctx.spec])})


SLOW_RANK_DELAY_S = 1.0      # CPU burnt per step by the slow rank (a 16-rank step here is ~0.1-0.5 s of CPU)
HANG_TIMEOUT_S = 25          # the watchdog's step timeout when a sigstop is planned
SLOW_TIMEOUT_S = 900         # start-up, first step, saves: generous, the 2-core machine is loaded


def submit_overrides(specs: list[FaultSpec], world_size: int | None = None) -> list[str]:
    """Trainer overrides the planned faults need at submit time: the watchdog's timeouts for a
    sigstop, the straggler report and the slow-rank knobs for a slow_rank. None for the other
    kinds, so a sigkill-only run is configured exactly as before."""
    out: list[str] = []
    if any(s.kind == "sigstop" for s in specs):
        out += [f"train.fault.hang_timeout_s={HANG_TIMEOUT_S}", f"train.fault.slow_timeout_s={SLOW_TIMEOUT_S}"]
    slow = [s for s in specs if s.kind == "slow_rank"]
    if slow:
        if len(slow) > 1:
            raise ValueError("one slow_rank fault per rehearsal (the knob names one rank)")
        rank = slow[0].rank if slow[0].rank is not None else (world_size - 1 if world_size else None)
        if rank is None:
            raise ValueError("slow_rank needs :rank=R")
        out += [f"train.fault.inject_slow_rank={rank}", f"train.fault.inject_delay_s={SLOW_RANK_DELAY_S}",
                "train.fault.straggler_interval=2"]
    return out


FaultKind = Callable[[FaultContext], Injected]

FAULT_KINDS: dict[str, FaultKind] = {
    "sigkill": sigkill_rank,
    "node_down": node_down,
    "sigstop": sigstop_rank,
    "slow_rank": slow_rank,
}
