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
from launch.rehearsal.faults import FaultSpec
from launch.rehearsal.report import metrics_steps
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
    with pytest.raises(ValueError, match="unknown kind 'sigstop'"):
        FaultSpec.parse("sigstop@3")


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
