"""The multi-node rehearsal, shortened: a real emulated 2-node Slurm (network namespaces), the
52B experiment at CPU size through ``python -m launch``, one rank SIGKILLed mid-run, torchrun
restarting the workers inside the allocation and the trainer resuming from its checkpoint.

Skips only where the machine cannot host the cluster (not root, no ``ip netns``); CI runs
as root and .ci/rehearsal/setup.sh installs iproute2.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from launch.rehearsal import cluster
from launch.rehearsal.faults import FAULT_KINDS, FaultSpec, Injected, submit_overrides
from launch.rehearsal.report import checkpoint_section, metrics_steps, straggler_record
from tests.launch.slurm_cluster import REPO_ROOT


def _sbatch_dry_run(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch", "stage=launch.probe", "cluster=rehearsal", "dry_run=true",
                           "parallel=dp2", "cluster.nodes=1", *overrides],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


def test_max_restarts_reaches_torchrun_with_a_fresh_store_per_round():
    script = _sbatch_dry_run("cluster.max_restarts=2").stdout
    assert "torch.distributed.run --nnodes=\"$SLURM_NNODES\" --nproc_per_node=2 --max-restarts=2 " in script
    assert "export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in script
    plain = _sbatch_dry_run("cluster.max_restarts=0").stdout
    assert "--max-restarts" not in plain and "TORCH_DISABLE_SHARE_RDZV_TCP_STORE" not in plain


@pytest.mark.parametrize("overrides, message", [
    (["cluster.max_restarts=-1"], "cluster.max_restarts: must be a non-negative integer"),
    (["cluster.max_restarts=2", "task_layout=per_gpu"], "cluster.max_restarts: 2 needs torchrun"),
])
def test_bad_max_restarts_names_the_key(overrides, message):
    run = _sbatch_dry_run(*overrides)
    assert run.returncode == 2 and message in run.stderr, run.stderr[-2000:]


def test_fault_spec_parses_and_rejects_unknown_kinds():
    assert FaultSpec.parse("sigkill@7:rank=11") == FaultSpec("sigkill", 7, 11)
    assert FaultSpec.parse("sigstop@13:rank=13") == FaultSpec("sigstop", 13, 13)
    assert FaultSpec.parse("slow_rank@0") == FaultSpec("slow_rank", 0, None)
    assert {"sigkill", "sigstop", "slow_rank", "node_down"} <= set(FAULT_KINDS)
    with pytest.raises(ValueError, match="unknown kind 'sigterm'"):
        FaultSpec.parse("sigterm@3")
    with pytest.raises(ValueError, match="expected KIND@STEP"):
        FaultSpec.parse("sigstop")


def test_submit_overrides_only_for_the_kinds_that_need_them():
    assert submit_overrides([FaultSpec("sigkill", 4, 3)], 4) == []   # the suite's run is configured as before
    stop = submit_overrides([FaultSpec("sigstop", 4, 3)], 4)
    assert any(o.startswith("train.fault.hang_timeout_s=") for o in stop)
    assert any(o.startswith("train.fault.slow_timeout_s=") for o in stop)
    slow = submit_overrides([FaultSpec("slow_rank", 0, None)], 16)
    assert "train.fault.inject_slow_rank=15" in slow and "train.fault.straggler_interval=2" in slow
    with pytest.raises(ValueError, match="one slow_rank"):
        submit_overrides([FaultSpec("slow_rank", 0, 1), FaultSpec("slow_rank", 0, 2)], 4)


def test_straggler_record_names_rank_host_and_steps():
    spec, injected = FaultSpec("slow_rank", 0, 5), Injected(time=100.0, target={"rank": 5, "host": "n1"})
    events = [{"event": "stragglers", "step": 2, "time": 101.0, "stragglers": [{"rank": 2, "host": "n0"}]},
              {"event": "stragglers", "step": 4, "time": 103.5, "median_busy_s": 0.2,
               "stragglers": [{"rank": 5, "host": "n1", "ratio": 6.1}]}]
    record = straggler_record(events, [{"step": 1}], spec, injected, 0)
    assert record["detected_by"]["rank"] == 5 and record["detected_by"]["host"] == "n1"
    assert record["steps_after_injection"] == 4 and record["detection_s"] == 3.5 and record["recovered"]
    assert not straggler_record(events[:1], [{"step": 1}], spec, injected, 0)["recovered"]


def test_sigstop_detection_is_the_first_hang_row_after_the_fault():
    from launch.rehearsal.report import detection

    injected = Injected(time=100.0, target={"rank": 13, "host": "n2"})
    events = [{"event": "hang", "time": 50.0, "ranks": [{"rank": 1}]},
              {"event": "hang", "time": 125.5, "step": 14, "ranks": [{"rank": 0}, {"rank": 13, "host": "n2"}]}]
    found = detection(events, FaultSpec("sigstop", 13, 13), injected)
    assert found["detection_s"] == 25.5 and found["named_frozen_rank"] and found["also_named"] == [0]
    assert detection(events, FaultSpec("sigkill", 13, 13), injected)["detected_by"] is None


def _accounting(run_dir: Path, iteration: int, written: list[int], rss: list[int]) -> None:
    d = run_dir / "checkpoints" / f"iter_{iteration:07d}"
    d.mkdir(parents=True)
    ranks = [{"rank": r, "bytes_written": w, "peak_extra_rss": m} for r, (w, m) in enumerate(zip(written, rss))]
    (d / "checkpoint_accounting.json").write_text(json.dumps({"iteration": iteration, "ranks": ranks}))


def test_checkpoint_section_from_synthetic_accounting_files(tmp_path):
    _accounting(tmp_path, 5, [300, 100, 0, 0], [100, 50, 0, 0])       # holders: 300 vs mean 200 -> 1.5
    _accounting(tmp_path, 10, [200, 200, 0, 0], [250, 10, 0, 0])      # share 100: rss 2.5 > 2
    loads = tmp_path / "checkpoint_accounting"
    loads.mkdir()
    (loads / "load_iter_0000005.json").write_text(json.dumps({
        "checkpoint": str(tmp_path / "checkpoints" / "iter_0000005"),
        "summary": {"checkpoint_bytes": 400, "bytes_read_total": 420, "read_ratio": 1.05},
        "ranks": [{"rank": r, "bytes_read": b} for r, b in enumerate([120, 100, 100, 100])]}))
    section = checkpoint_section(tmp_path, projection={"layout": "x"})
    assert [s["iteration"] for s in section["saves"]] == [5, 10]
    assert section["saves"][0]["ranks_holding_state"] == 2 and section["saves"][0]["write_balance"] == 1.5
    assert section["saves"][0]["ranks"][0] == {"rank": 0, "bytes_written": 300, "peak_extra_rss": 100,
                                               "peak_extra_rss_over_share": 1.0}
    ratios = section["ratios"]
    assert ratios["write_balance"] == {"worst": 1.5, "limit": 1.5, "n": 2, "pass": True}
    assert ratios["read_ratio"]["worst"] == 1.05 and ratios["read_ratio"]["pass"]
    assert ratios["peak_extra_rss_over_share"]["worst"] == 2.5 and ratios["peak_extra_rss_over_share"]["pass"] is False
    assert section["loads"][0]["ranks"][0]["bytes_read"] == 120 and section["projection_52b"] == {"layout": "x"}
    empty = checkpoint_section(tmp_path / "none")
    assert empty["ratios"]["read_ratio"]["pass"] is None


@pytest.mark.timeout(420)
def test_rank_killed_on_one_node_restarts_in_the_allocation_and_resumes(tmp_path):
    if missing := cluster.missing_capability():
        pytest.skip(f"emulated multi-node Slurm unavailable: {missing}")
    from launch.rehearsal.__main__ import PRESETS, rehearse

    preset = PRESETS["short"]
    report = rehearse("short", tmp_path, keep_cluster=False)
    # Torn down: no namespace and no /etc/hosts line of ours is left.
    assert not [ns for ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
                if ns.startswith("rh-")]
    assert "teleflm-rehearsal" not in Path("/etc/hosts").read_text()

    assert report["job"]["state"] == "COMPLETED", report["job"]
    # Restarted by torchrun inside the allocation, not requeued by Slurm.
    assert report["job"]["restarts_slurm"] == "0"
    assert len(report["attempts"]) == 2 and max(report["attempts"][1]["restart_counts"]) >= 1, report["attempts"]

    # Two ranks on each of two hosts, each host its own network namespace; the pipeline
    # boundary (PP stage 0 = ranks 0-1, stage 1 = ranks 2-3) crosses the nodes.
    hosts = {r["rank"]: r["host"] for r in report["ranks"]}
    assert sorted(hosts) == [0, 1, 2, 3]
    assert hosts[0] == hosts[1] != hosts[2] == hosts[3]
    assert len({r["netns"] for r in report["ranks"]}) == 2
    assert {r["host"] for r in report["ranks"]} == {r["slurm_node"] for r in report["ranks"]}

    (fault,) = report["faults"]
    assert fault["kind"] == "sigkill" and fault["target"]["host"] == hosts[3] and fault["recovered"]
    # Resumed from the newest complete checkpoint at the moment of the fault, losing at most a save interval.
    assert fault["checkpoint_at_fault"] == 3 and fault["resumed_from_step"] == 3
    assert 1 <= fault["steps_lost"] <= preset["save_interval"]
    assert fault["next_completed_step"] == 4
    assert fault["time_to_next_completed_step_s"] > 0

    # Every step exactly once in metrics.jsonl after recovery, although some were trained twice.
    assert metrics_steps(tmp_path / "run") == list(range(1, preset["train_iters"] + 1))
    assert report["steps"]["every_step_once"]
    assert report["steps"]["trained_including_repeats"] == preset["train_iters"] + fault["steps_lost"]
    saved = json.loads((tmp_path / "rehearsal.json").read_text())
    assert saved["faults"] == report["faults"]
    assert (tmp_path / "timeline.png").stat().st_size > 10_000
