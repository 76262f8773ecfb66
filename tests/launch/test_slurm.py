"""A real job on a real (one-node) Slurm: submit through the launcher, preempt, requeue, resume.

Slurm is started by .ci/slurm/setup.sh when it is not running (CI runs the same
script first). The job is `launch.probe` on 2 gloo ranks under torchrun: it
checkpoints every few steps and follows the trainer's preemption contract.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.launch.slurm_cluster import REPO_ROOT, ensure_local_slurm

pytestmark = pytest.mark.timeout(240)


def _scontrol_field(job_id: str, field: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    for token in out.split():
        if token.startswith(field + "="):
            return token.split("=", 1)[1]
    return ""


def _wait(predicate, timeout_s: float, what: str, job_id: str, log_dir: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    logs = "\n".join(p.read_text()[-3000:] for p in log_dir.glob("*.out"))
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; job {job_id} state "
                         f"{_scontrol_field(job_id, 'JobState')}\n{logs}")


def _task_pids(job_id: str) -> list[int]:
    """PIDs of the srun tasks of step 0 (rows with a LOCALID in `scontrol listpids`)."""
    out = subprocess.run(["scontrol", "listpids", job_id], capture_output=True, text=True, check=True).stdout
    rows = [line.split() for line in out.splitlines()[1:]]
    pids = [int(r[0]) for r in rows if len(r) >= 4 and r[2] == "0" and r[3] != "-"]
    assert pids, out
    return pids


def _progress(run_dir: Path) -> list[str]:
    path = run_dir / "progress.log"
    return path.read_text().splitlines() if path.exists() else []


def test_job_is_preempted_requeued_and_resumes_from_its_checkpoint(tmp_path):
    ensure_local_slurm()
    run_dir = tmp_path / "probe"
    launch = subprocess.run(
        [sys.executable, "-m", "launch", "stage=launch.probe", "cluster=slurm_ci",
         f"run_dir={run_dir}", "parallel=dp2", "steps=60", "step_seconds=0.2", "save_every=5"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert launch.returncode == 0, launch.stderr
    record = json.loads((run_dir / "launch" / "launch.json").read_text())
    job_id, log_dir = record["job_id"], run_dir / "launch" / "slurm"
    script = Path(record["script"]).read_text()
    assert "#SBATCH --signal=USR1@30" in script and "#SBATCH --requeue" in script
    try:
        # First attempt: running under torchrun across 2 ranks, past a few checkpoints.
        _wait(lambda: sum(bool(re.search(r"restart=0 step \d+$", l)) for l in _progress(run_dir)) >= 8,
              90, "8 steps of the first attempt", job_id, log_dir)
        # Preempt as Slurm's --signal=USR1@N warning does: it reaches the srun task (launch.node_entry),
        # not torchrun's workers, which run in their own sessions; node_entry must forward it to the ranks.
        for pid in _task_pids(job_id):
            os.kill(pid, signal.SIGUSR1)
        # The trainer-side contract saves and exits 75; launch.node_entry requeues the job.
        _wait(lambda: _scontrol_field(job_id, "Restarts") == "1" and _scontrol_field(job_id, "JobState") == "PENDING",
              60, "the job to be requeued", job_id, log_dir)
        # Slurm holds a requeued job for ~2 minutes (Reason=BeginTime); release it now to keep the test short.
        # Not within the same second as the requeue: slurmd revoked the first attempt's credential at
        # one-second resolution and kills a relaunch whose credential carries that second ("Job
        # credential revoked", seen once in a full suite run).
        time.sleep(2)
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
        _wait(lambda: _scontrol_field(job_id, "JobState") in ("COMPLETED", "FAILED", "CANCELLED"),
              120, "the requeued job to finish", job_id, log_dir)
    finally:
        if _scontrol_field(job_id, "JobState") in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING"):
            subprocess.run(["scancel", job_id])

    assert _scontrol_field(job_id, "JobState") == "COMPLETED", [p.read_text() for p in log_dir.glob("*.out")]
    lines = _progress(run_dir)
    preempted = [l for l in lines if "preempted at step" in l]
    assert len(preempted) == 1 and "restart=0" in preempted[0], lines
    saved_step = int(preempted[0].split("preempted at step ")[1].split(":")[0])
    assert 8 <= saved_step < 60
    # The requeued attempt started from the checkpoint with no flag, and finished.
    assert any(f"restart=1 start at step {saved_step} world=2" in l for l in lines), lines
    steps_after = [int(m.group(1)) for l in lines if (m := re.search(r"restart=1 step (\d+)$", l))]
    assert steps_after == list(range(saved_step + 1, 61))
    done = json.loads((run_dir / "done.json").read_text())
    assert done == {"steps": 60, "world_size": 2, "restart": 1}
    log = "".join(p.read_text() for p in log_dir.glob("*.out"))
    assert "requeueing Slurm job" in log and "restart 1 on localhost" in log


def test_rendezvous_lines_pick_the_first_host_and_a_job_derived_port():
    ensure_local_slurm()  # scontrol expands the node list
    from launch.rendezvous import MASTER_ADDR_SHELL, MASTER_PORT_SHELL

    script = f"{MASTER_ADDR_SHELL}; {MASTER_PORT_SHELL}; echo $MASTER_ADDR $MASTER_PORT"
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "SLURM_JOB_NODELIST": "gpu[007-010],cpu1",
                              "SLURM_JOB_ID": "123457"}).stdout.split()
    assert out == ["gpu007", "23457"]


def test_hydra_sweep_goes_out_as_one_job_array(tmp_path):
    ensure_local_slurm()
    sweep_dir = tmp_path / "sweep"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "launch", "-m", "hydra/launcher=slurm_array", "stage=launch.probe",
         "cluster=slurm_ci", "cluster.cpus_per_node=1", f"run_dir={tmp_path}/a,{tmp_path}/b", "steps=3",
         "step_seconds=0.1", f"hydra.sweep.dir={sweep_dir}"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and not all((tmp_path / p / "done.json").exists() for p in "ab"):
            assert launcher.poll() is None or launcher.returncode == 0, launcher.stdout.read()[-3000:]
            time.sleep(0.5)
        task_dirs = sorted(p.name for p in (sweep_dir / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name))
        assert all((tmp_path / p / "done.json").exists() for p in "ab"), task_dirs
        # Both sweep points are tasks of one array: <array id>_0 and <array id>_1.
        array_id = task_dirs[0].split("_")[0]
        assert task_dirs == [f"{array_id}_0", f"{array_id}_1"]
        assert _scontrol_field(f"{array_id}_1", "ArrayJobId") == array_id
        for point in "ab":
            assert json.loads((tmp_path / point / "done.json").read_text())["steps"] == 3
    finally:
        # submitit polls sacct (absent on the CI Slurm) with growing intervals; the jobs are done, so stop waiting.
        if launcher.poll() is None:
            launcher.terminate()
            launcher.wait(timeout=30)
