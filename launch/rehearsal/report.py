"""rehearsal.json and timeline.png from what the watcher saw.

The recovery figures are the same for every fault kind (see :mod:`launch.rehearsal.faults`):
when it struck, the last step completed before it, the newest complete checkpoint at that
moment, the step the job resumed from, the steps lost, and how long until the next completed
step and until progress was back where it was.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from launch.rehearsal.faults import FaultSpec, Injected
from launch.rehearsal.watch import Watcher


def recovery(watcher: Watcher, spec: FaultSpec, injected: Injected, checkpoint_at_fault: int | None,
             attempt_at_fault: int) -> dict[str, Any]:
    """The record of one fault: a slow rank's is its stragglers row, the others' a restart."""
    if spec.kind == "slow_rank":
        return straggler_record(watcher.events, watcher.steps, spec, injected, attempt_at_fault)
    record = restart_record(watcher, spec, injected, checkpoint_at_fault, attempt_at_fault)
    record.update(detection(watcher.events, spec, injected))
    return record


def detection(events: list[dict[str, Any]], spec: FaultSpec, injected: Injected) -> dict[str, Any]:
    """Which row noticed the fault and when. A sigstop is noticed by a peer's hang watchdog (the
    first ``hang`` row after the fault); a sigkill or node_down leaves no row of the trainer's
    (torchrun's agent / Slurm notice the dead process), so detection is not a trainer figure."""
    if spec.kind != "sigstop":
        return {"detected_by": None, "detection_s": None}
    hang = next((e for e in events if e.get("event") == "hang" and e.get("time", 0) >= injected.time - 1), None)
    if hang is None:
        return {"detected_by": None, "detection_s": None, "named_frozen_rank": False}
    named = [r.get("rank") for r in hang.get("ranks", [])]
    return {"detected_by": {k: hang.get(k) for k in ("event", "step", "kind", "ranks", "detected_by", "phase",
                                                      "timeout_s", "detected_after_s")},
            "detection_s": round(hang["time"] - injected.time, 2),
            "named_frozen_rank": injected.target.get("rank") in named,
            # ranks the row names besides the stopped one: healthy ranks named frozen (0: the row is exact)
            "also_named": sorted(r for r in named if r != injected.target.get("rank"))}


def straggler_record(events: list[dict[str, Any]], steps: list[dict[str, Any]], spec: FaultSpec,
                     injected: Injected, attempt_at_fault: int) -> dict[str, Any]:
    """A slow rank: the first ``stragglers`` row naming it (rank, host), how many steps after
    the knob took effect (it acts from step 1 of every process: the injection is at submit),
    and how long after the rehearsal recorded the target. No restart, nothing lost."""
    rank = injected.target.get("rank")
    row = next((e for e in events if e.get("event") == "stragglers"
                and any(n.get("rank") == rank for n in e.get("stragglers", []))), None)
    named = next((n for n in row["stragglers"] if n.get("rank") == rank), None) if row else None
    first = steps[0]["step"] - 1 if steps else 0
    return {
        "kind": spec.kind, "requested_after_step": spec.after_step, "target": injected.target,
        "time": round(injected.time, 3), "attempt_struck": attempt_at_fault, "injected_at": "submit (from step 1)",
        "detected_by": ({"event": "stragglers", "step": row["step"], "rank": named["rank"], "host": named["host"],
                         "ratio": named.get("ratio"), "median_busy_s": row.get("median_busy_s")} if row else None),
        "detection_s": (round(row.get("time", row.get("seen_at")) - injected.time, 2)
                        if row and row.get("time", row.get("seen_at")) else None),
        "steps_after_injection": row["step"] - first if row else None,
        "host_matches": bool(named) and named.get("host") == injected.target.get("host"),
        "steps_lost": 0, "restart": False,
        "last_step_before": spec.after_step,
        "time_to_next_completed_step_s": None,
        "recovered": named is not None and named.get("host") == injected.target.get("host"),
    }


def restart_record(watcher: Watcher, spec: FaultSpec, injected: Injected, checkpoint_at_fault: int | None,
                   attempt_at_fault: int) -> dict[str, Any]:
    """Recovery figures for one fault that costs a restart. Steps are split by attempt, not by clock: the struck
    attempt may still log a step after the fault (the other ranks finish the step the dead rank
    had already done its part of), and that step is lost too."""
    t = injected.time
    old = [s["step"] for s in watcher.steps if s["attempt"] <= attempt_at_fault]
    last_before = max(old) if old else 0
    after = [s for s in watcher.steps if s["attempt"] > attempt_at_fault]
    resumes = [e for e in watcher.events if e.get("event") in ("resume", "start") and e["attempt"] > attempt_at_fault]
    resumed_from = resumes[0]["step"] if resumes else None
    next_step = after[0] if after else None
    caught_up = next((s for s in after if s["step"] > last_before), None)
    later = [a for a in watcher.attempts if a.index > attempt_at_fault]
    restart = later[0] if later else None
    return {
        "kind": spec.kind,
        "requested_after_step": spec.after_step,
        "target": injected.target,
        "time": round(t, 3),
        "attempt_struck": attempt_at_fault,
        "last_step_before": last_before,
        "checkpoint_at_fault": checkpoint_at_fault,
        "resumed_from_step": resumed_from,
        "steps_lost": None if resumed_from is None else last_before - resumed_from,
        "next_completed_step": next_step["step"] if next_step else None,
        "time_to_next_completed_step_s": round(next_step["t"] - t, 2) if next_step else None,
        "time_to_caught_up_s": round(caught_up["t"] - t, 2) if caught_up else None,
        "restart_processes_started_s_after_fault": round(restart.started_at - t, 2) if restart else None,
        "restart_startup_s": (round(restart.first_step_time - restart.started_at, 2)
                              if restart and restart.first_step_time else None),
        "restart_counts": sorted({r.restart_count for r in restart.ranks}) if restart else None,
        "recovered": resumed_from is not None and caught_up is not None,
    }


LIMITS = {"write_balance": 1.5, "read_ratio": 1.1, "peak_extra_rss_over_share": 2.0}   # issue 16's bounds


def checkpoint_section(run_dir: Path, projection: dict[str, Any] | None = None) -> dict[str, Any]:
    """From the per-rank accounting files (docs/checkpointing.md): every save's bytes written
    and peak extra RSS per rank (``iter_*/checkpoint_accounting.json``, the saves still on
    disk after pruning), every resume's bytes read per rank
    (``checkpoint_accounting/load_iter_*.json``), and the issue's three ratios, each worst
    case over the saves / loads with its bound and pass/fail:

    * write_balance: largest per-rank write / mean write among the ranks that wrote (hold state);
    * read_ratio: bytes all ranks read on a resume / checkpoint size;
    * peak_extra_rss_over_share: largest extra RSS during a save / (checkpoint size / world).
    """
    saves, loads = [], []
    for path in sorted(run_dir.glob("**/iter_*/checkpoint_accounting.json")):
        record = json.loads(path.read_text())
        ranks = record["ranks"]
        written = [r["bytes_written"] for r in ranks]
        holding = [w for w in written if w > 0]
        total = sum(written)
        share = total / len(ranks) if ranks else 0
        peak = max((r.get("peak_extra_rss", 0) for r in ranks), default=0)
        saves.append({"iteration": record["iteration"], "bytes_total": total, "share_bytes": round(share),
                      "ranks": [{"rank": r["rank"], "bytes_written": r["bytes_written"],
                                 "peak_extra_rss": r.get("peak_extra_rss"),
                                 "peak_extra_rss_over_share": round(r.get("peak_extra_rss", 0) / share, 3)
                                 if share else None} for r in ranks],
                      "ranks_holding_state": len(holding),
                      "write_balance": round(max(holding) / (sum(holding) / len(holding)), 3) if holding else None,
                      "peak_extra_rss_over_share": round(peak / share, 3) if share else None})
    saves.sort(key=lambda s: s["iteration"])
    for path in sorted((run_dir / "checkpoint_accounting").glob("load_iter_*.json")):
        record = json.loads(path.read_text())
        summary = record["summary"]
        loads.append({"checkpoint": Path(record["checkpoint"]).name, "checkpoint_bytes": summary["checkpoint_bytes"],
                      "bytes_read_total": summary["bytes_read_total"], "read_ratio": summary["read_ratio"],
                      "ranks": [{"rank": r["rank"], "bytes_read": r["bytes_read"]} for r in record["ranks"]]})

    def ratio(name: str, values: list) -> dict[str, Any]:
        values = [v for v in values if v is not None]
        worst = max(values) if values else None
        return {"worst": worst, "limit": LIMITS[name], "n": len(values),
                "pass": None if worst is None else worst <= LIMITS[name]}

    return {"saves": saves, "loads": loads,
            "ratios": {"write_balance": ratio("write_balance", [s["write_balance"] for s in saves]),
                       "read_ratio": ratio("read_ratio", [x["read_ratio"] for x in loads]),
                       "peak_extra_rss_over_share": ratio("peak_extra_rss_over_share",
                                                          [s["peak_extra_rss_over_share"] for s in saves])},
            "projection_52b": projection}


def metrics_steps(run_dir: Path) -> list[int]:
    """The step numbers of metrics.jsonl's step rows, in file order (what "every step once" checks)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["step"] for r in rows if r.get("event") is None and "loss" in r]


def build_report(*, layout: dict[str, Any], job: dict[str, Any], watcher: Watcher, faults: list[dict[str, Any]],
                 train_iters: int, save_interval: int, submitted_at: float, finished_at: float) -> dict[str, Any]:
    first = watcher.attempts[0] if watcher.attempts else None
    steps = metrics_steps(watcher.run_dir)
    return {
        "layout": layout,
        "job": job,
        "ranks": [{"rank": r.rank, "host": r.host, "slurm_node": r.slurm_node, "local_rank": r.local_rank,
                   "netns": r.netns} for r in (first.ranks if first else [])],
        "hosts": sorted({r.host for r in first.ranks}) if first else [],
        "startup": {
            "fresh_submit_to_first_step_s": (round(first.first_step_time - submitted_at, 2)
                                             if first and first.first_step_time else None),
            "fresh_process_start_to_first_step_s": (round(first.first_step_time - first.started_at, 2)
                                                    if first and first.first_step_time else None),
            "resume_process_start_to_first_step_s": [f["restart_startup_s"] for f in faults
                                                     if "restart_startup_s" in f],   # a slow_rank has none
        },
        "attempts": [{"index": a.index, "started_at": round(a.started_at, 3), "first_step": a.first_step,
                      "restart_counts": sorted({r.restart_count for r in a.ranks}),
                      "hosts": sorted({r.host for r in a.ranks})} for a in watcher.attempts],
        "faults": faults,
        "checkpoint": checkpoint_section(watcher.run_dir, _projection()),
        "steps": {
            "train_iters": train_iters,
            "save_interval": save_interval,
            "in_metrics": len(steps),
            "every_step_once": steps == list(range(1, train_iters + 1)),
            "duplicates": sorted({s for s in steps if steps.count(s) > 1}),
            "missing": sorted(set(range(1, train_iters + 1)) - set(steps)),
            "trained_including_repeats": len(watcher.steps),
            "wall_s": round(finished_at - submitted_at, 2),
            # the final checkpoint, held-out scoring, summary and process exit after the last step
            "last_step_to_job_end_s": round(finished_at - watcher.steps[-1]["t"], 2) if watcher.steps else None,
            "mean_step_time_s": (round(sum(s["step_time_s"] or 0 for s in watcher.steps) / len(watcher.steps), 3)
                                 if watcher.steps else None),
        },
        "timeline": [{"step": s["step"], "t": round(s["t"] - submitted_at, 2), "attempt": s["attempt"]}
                     for s in watcher.steps],
    }


def _projection() -> dict[str, Any] | None:
    """bench/pretrain/checkpoint_scaling.py's 52B projection (its --project-only figures)."""
    try:
        from bench.pretrain.checkpoint_scaling import project_52b
    except ImportError as err:   # the bench tree is not shipped with an installed package
        return {"error": f"bench.pretrain.checkpoint_scaling not importable: {err}"}
    return project_52b()


def plot_timeline(report: dict[str, Any], submitted_at: float, path: Path) -> None:
    """Steps against wall time since submission, one colour per attempt, faults as red lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for attempt in sorted({p["attempt"] for p in report["timeline"]}):
        pts = [p for p in report["timeline"] if p["attempt"] == attempt]
        ax.plot([p["t"] for p in pts], [p["step"] for p in pts], ".-", label=f"attempt {attempt}")
    for attempt in report["attempts"]:   # when each attempt's rank processes started: the start-up gap is visible
        ax.axvline(attempt["started_at"] - submitted_at, color="grey", linestyle=":")
        ax.annotate(f"attempt {attempt['index']} ranks start", (attempt["started_at"] - submitted_at, 0),
                    textcoords="offset points", xytext=(3, 3), fontsize=7, color="grey", rotation=90)
    colours = {"sigkill": "red", "sigstop": "purple", "slow_rank": "darkorange", "node_down": "brown"}
    for fault in report["faults"]:
        x = fault["time"] - submitted_at
        colour = colours.get(fault["kind"], "red")
        ax.axvline(x, color=colour, linestyle="--")
        target = fault["target"]
        if fault["kind"] == "slow_rank":
            seen = fault.get("detected_by") or {}
            what = (f"named at step {seen.get('step')} ({fault.get('steps_after_injection')} steps), "
                    f"x{seen.get('ratio')}" if seen else "not named")
        else:
            what = f"lost {fault['steps_lost']} steps, next step +{fault['time_to_next_completed_step_s']} s"
            if fault.get("detection_s") is not None:
                what += f"\nhang row +{fault['detection_s']} s"
        ax.annotate(f"{fault['kind']} rank {target.get('rank')} on {target.get('host')}\n{what}",
                    (x, max(1, fault["last_step_before"])), textcoords="offset points", xytext=(5, 10), fontsize=8,
                    color=colour)   # max: a slow_rank's step 0 lies below the axis and would not be drawn
    layout = report["layout"]
    ax.set_title(f"rehearsal: TP{layout['tp']} x PP{layout['pp']} x DP{layout['dp']} = {layout['world_size']} ranks "
                 f"on {layout['nodes']} nodes")
    ax.set_xlim(left=0)
    ax.set_xlabel("wall time since submission (s)")
    ax.set_ylabel("step")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
