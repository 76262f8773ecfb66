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
    """Recovery figures for one fault. Steps are split by attempt, not by clock: the struck
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
            "resume_process_start_to_first_step_s": [f["restart_startup_s"] for f in faults],
        },
        "attempts": [{"index": a.index, "started_at": round(a.started_at, 3), "first_step": a.first_step,
                      "restart_counts": sorted({r.restart_count for r in a.ranks}),
                      "hosts": sorted({r.host for r in a.ranks})} for a in watcher.attempts],
        "faults": faults,
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
    for fault in report["faults"]:
        x = fault["time"] - submitted_at
        ax.axvline(x, color="red", linestyle="--")
        target = fault["target"]
        ax.annotate(f"{fault['kind']} rank {target.get('rank')} on {target.get('host')}\n"
                    f"lost {fault['steps_lost']} steps, next step +{fault['time_to_next_completed_step_s']} s",
                    (x, fault["last_step_before"]), textcoords="offset points", xytext=(5, 10), fontsize=8,
                    color="red")
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
