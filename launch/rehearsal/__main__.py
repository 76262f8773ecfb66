"""``python -m launch.rehearsal``: a multi-node rehearsal on the emulated Slurm cluster.

Brings the cluster up (scripts/rehearsal/cluster.sh), submits ``+experiment=teleflm_52b``
through the ordinary ``python -m launch`` path from the login node (same sbatch script,
srun, torchrun c10d rendezvous across nodes, gloo), with only the size keys shrunk, injects
the faults asked for, waits for the job, checks metrics.jsonl and writes
``OUT/rehearsal.json`` and ``OUT/timeline.png`` (docs/rehearsal.md).

    python -m launch.rehearsal                                   # the full one: TP4 x PP2 x DP2 on 2 of 3 nodes
    python -m launch.rehearsal --preset short --out runs/r2      # what the test runs: 4 ranks on 2 nodes
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from launch.rehearsal import cluster
from launch.rehearsal.faults import FAULT_KINDS, FaultContext, FaultSpec, submit_overrides
from launch.rehearsal.report import build_report, plot_timeline, recovery
from launch.rehearsal.watch import Watcher

REPO_ROOT = Path(__file__).resolve().parents[2]
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}

# Only the size keys of the 52B experiment change (width, depth, heads, vocab, seq, batch), plus
# the run's length and checkpoint cadence. checkpoint.async_save=false: on two shared cores the
# async writer finalises a checkpoint several steps late, so a fault would lose more than a save
# interval for a reason that is this machine's, not the recovery path's (docs/rehearsal.md).
SIZE_KEYS = ["model.num_layers=4", "model.hidden_size=256", "model.num_attention_heads=4",
             "model.num_query_groups=4", "model.kv_channels=64", "model.ffn_hidden_size=688",
             "model.seq_length=64", "model.vocab_size=512", "train.micro_batch_size=1"]
PRESETS = {
    # TP4 x PP2 x DP2 = 16 ranks, 8 per node: the pipeline boundary crosses nodes; the 3rd node is spare.
    "full": {"cluster_nodes": 3, "job_nodes": 2, "tp": 4, "pp": 2, "dp": 2, "global_batch": 4,
             "train_iters": 24, "save_interval": 5,
             # a slow rank from the start (named by a stragglers row), a killed rank, a frozen one
             "faults": ["slow_rank@0:rank=5", "sigkill@7:rank=11", "sigstop@13:rank=13"]},
    # The test: TP1 x PP2 x DP2 = 4 ranks, 2 per node, the pipeline across the two nodes.
    # The end-of-run held-out scoring is cut to a few documents: the test is about recovery.
    "short": {"cluster_nodes": 2, "job_nodes": 2, "tp": 1, "pp": 2, "dp": 2, "global_batch": 4,
              "train_iters": 8, "save_interval": 3, "faults": ["sigkill@4:rank=3"],
              "extra": ["train.heldout_max_documents=4"]},
}


def stage_overrides(p: dict, data: Path, run_dir: Path) -> list[str]:
    return ["+experiment=teleflm_52b", *SIZE_KEYS,
            f"parallel.tensor_model_parallel_size={p['tp']}", f"parallel.pipeline_model_parallel_size={p['pp']}",
            f"parallel.data_parallel_size={p['dp']}", f"parallel.sequence_parallel={str(p['tp'] > 1).lower()}",
            f"train.global_batch_size={p['global_batch']}", f"train.train_iters={p['train_iters']}",
            f"train.lr_warmup_iters={max(1, p['train_iters'] // 8)}", "train.eval_interval=0",
            f"checkpoint.save_interval={p['save_interval']}", "checkpoint.async_save=false",
            "logging.progress=false", *p.get("extra", []), f"data.path={data}", f"run_dir={run_dir}"]


def submit(p: dict, data: Path, run_dir: Path, max_restarts: int, extra: list[str] = ()) -> str:
    """``python -m launch stage=pretrain cluster=rehearsal ...`` on the login node; returns the job id."""
    argv = [sys.executable, "-m", "launch", "stage=pretrain", "cluster=rehearsal", f"cluster.nodes={p['job_nodes']}",
            f"cluster.max_restarts={max_restarts}", *stage_overrides(p, data, run_dir), *extra]
    done = cluster.login_run(argv, cwd=REPO_ROOT, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"python -m launch failed (rc {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads((run_dir / "launch" / "launch.json").read_text())["job_id"]


def ensure_data(path: Path | None, out: Path) -> Path:
    """A tokenized dataset: the one given, or the suite's small synthetic one (the rehearsal
    exercises launch and recovery, not the data; tests/helpers/synthetic_data.py writes the
    tokenizer stage's layout in a second)."""
    if path is not None:
        return path
    from tests.helpers.synthetic_data import make_indexed_dataset

    root = out / "data"
    return root / "indexed" if (root / "indexed" / "manifest.json").exists() else make_indexed_dataset(root)


def rehearse(preset: str, out: Path, data: Path | None = None, faults: list[str] | None = None,
             max_restarts: int = 3, timeout_s: float = 1200, keep_cluster: bool = True,
             cluster_nodes: int | None = None) -> dict:
    p = {**PRESETS[preset], **({"cluster_nodes": cluster_nodes} if cluster_nodes else {})}
    specs = sorted((FaultSpec.parse(f) for f in (p["faults"] if faults is None else faults)),
                   key=lambda s: s.after_step)
    out.mkdir(parents=True, exist_ok=True)
    run_dir = out / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)   # a rehearsal starts fresh: no checkpoint to resume from
    data = ensure_data(data, out)
    t_up = time.time()
    cluster.up(p["cluster_nodes"])
    cluster_up_s = time.time() - t_up
    world = p["tp"] * p["pp"] * p["dp"]
    fault_overrides = submit_overrides(specs, world)
    submitted_at = time.time()
    job_id = submit(p, data, run_dir, max_restarts, fault_overrides)
    print(f"[rehearsal] job {job_id}: {world} ranks on {p['job_nodes']} nodes; run dir {run_dir}", flush=True)
    watcher = Watcher(run_dir, job_id, world)
    pending, fault_rows, state, released = list(specs), [], "", []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            watcher.poll()
            state = cluster.scontrol_field(job_id, "JobState")
            if state in FINAL and _still_final(job_id):
                break
            if fault_rows and state == "PENDING" and cluster.scontrol_field(job_id, "Reason") == "BeginTime":
                # A requeued job is held ~2 minutes before it may start again; release it (and say so).
                time.sleep(2)   # not in the requeue's second: slurmd revokes that second's credentials
                cluster.login_run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"])
                released.append(round(time.time(), 3))
            if pending and _ready_for(pending[0], watcher, p["save_interval"]):
                spec = pending.pop(0)
                checkpoint = max(watcher.checkpoints(), default=None)
                attempt = watcher.attempts[-1].index
                injected = FAULT_KINDS[spec.kind](FaultContext(job_id, watcher.live_ranks(), spec))
                print(f"[rehearsal] {spec.kind} after step {watcher.last_step}: {injected.target}", flush=True)
                fault_rows.append((spec, injected, checkpoint, attempt))
            time.sleep(0.25)
        else:
            cluster.login_run(["scancel", job_id])
            raise TimeoutError(f"job {job_id} did not finish in {timeout_s:.0f} s (state {state}); see {run_dir}/launch/slurm")
        finished_at = time.time()
        watcher.poll()
        # Read from Slurm before a teardown takes the controller away.
        job = {"id": job_id, "state": state, "restarts_slurm": cluster.scontrol_field(job_id, "Restarts"),
               "nodelist": cluster.scontrol_field(job_id, "NodeList"), "cluster_up_s": round(cluster_up_s, 2),
               "faults_not_injected": [f"{s.kind}@{s.after_step}" for s in pending],
               "begin_time_hold_released_at": released}
    finally:
        if not keep_cluster:
            cluster.down()
    faults_report = [recovery(watcher, *row) for row in fault_rows]
    report = build_report(
        layout={"tp": p["tp"], "pp": p["pp"], "dp": p["dp"], "world_size": world, "nodes": p["job_nodes"],
                "cluster_nodes": p["cluster_nodes"], "ranks_per_node": world // p["job_nodes"],
                "experiment": "teleflm_52b",
                "stage_overrides": stage_overrides(p, data, run_dir) + fault_overrides,
                "max_restarts": max_restarts},
        job=job,
        watcher=watcher, faults=faults_report, train_iters=p["train_iters"], save_interval=p["save_interval"],
        submitted_at=submitted_at, finished_at=finished_at)
    (out / "rehearsal.json").write_text(json.dumps(report, indent=1) + "\n")
    plot_timeline(report, submitted_at, out / "timeline.png")
    return report


def _still_final(job_id: str, wait_s: float = 3.0) -> bool:
    """A job requeued after a node failure can pass through NODE_FAIL on its way back to PENDING."""
    time.sleep(wait_s)
    return cluster.scontrol_field(job_id, "JobState") in FINAL


def _ready_for(spec: FaultSpec, watcher: Watcher, save_interval: int) -> bool:
    """Strike once the step is done, every rank of the current attempt is alive, and the
    checkpoint before it is complete on disk: then the steps lost are at most a save interval,
    and a larger loss means the recovery path resumed from the wrong place."""
    if watcher.last_step < spec.after_step or not watcher.attempts:
        return False
    wanted = (spec.after_step // save_interval) * save_interval
    return (wanted == 0 or wanted in watcher.checkpoints()) and len(watcher.live_ranks()) == watcher.world_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "rehearsal")
    parser.add_argument("--data", type=Path, default=None, help="a tokenized indexed/ dir (default: synthetic)")
    parser.add_argument("--fault", action="append", default=None,
                        help=f"KIND@STEP[:rank=R], repeatable; kinds: {', '.join(FAULT_KINDS)} (default: the preset's)")
    parser.add_argument("--no-fault", action="store_true", help="inject nothing")
    parser.add_argument("--node-down", type=int, default=None, metavar="STEP",
                        help="also take a node down after STEP (adds node_down@STEP to the faults; a requeue: minutes)")
    parser.add_argument("--max-restarts", type=int, default=3, help="cluster.max_restarts for the job")
    parser.add_argument("--cluster-nodes", type=int, default=None, help="nodes in the cluster (default: the preset's)")
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--down", action="store_true", help="tear the cluster down afterwards")
    args = parser.parse_args(argv)
    if missing := cluster.missing_capability():
        print(f"[rehearsal] cannot run here: {missing}", file=sys.stderr)
        return 2
    faults = [] if args.no_fault else args.fault
    if args.node_down is not None:
        faults = [*(PRESETS[args.preset]["faults"] if faults is None else faults), f"node_down@{args.node_down}"]
    report = rehearse(args.preset, args.out.absolute(), args.data, faults,
                      args.max_restarts, args.timeout, keep_cluster=not args.down, cluster_nodes=args.cluster_nodes)
    print(json.dumps({k: report[k] for k in ("job", "startup", "faults")}, indent=1))
    s = report["steps"]
    print(f"[rehearsal] {s['in_metrics']} steps in metrics.jsonl, every step once: {s['every_step_once']}; "
          f"wall {s['wall_s']} s; report {args.out / 'rehearsal.json'}, plot {args.out / 'timeline.png'}")
    ok = report["job"]["state"] == "COMPLETED" and s["every_step_once"] and all(f["recovered"] for f in report["faults"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
