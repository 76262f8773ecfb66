"""A SIGKILLed pipeline driver leaves no Ray process behind, and the next run finishes the job.

Real CLI runs, each starting its own local Ray cluster (not the tests' shared one), killed with
SIGKILL in the middle of stage 1 (held there by a test stage that sleeps per document). Before data_pipeline/ray_session.py, the raylet's agents
(``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) outlived a killed driver as orphans of init.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from data_pipeline.ray_session import RECORD, session_processes

from .conftest import REPO_ROOT, output_rows, write_small_corpus

STARTUP_TIMEOUT = 240  # seconds until stage 1 writes; a Ray start takes 5 s alone, much more on a loaded box


def _start(inp: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "data_pipeline", f"input={inp}/*", f"output={out}",
                             "ray.progress=false", "resume.files_per_commit=1",
                             # ~2 s per file: the run is still in stage 1 when the test kills it
                             "stage_modules=[tests.data_pipeline.slow_stage]",
                             "stages=[normalize,slow_probe,language,quality,pii]"],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_mid_stage1(proc: subprocess.Popen, out: Path, committed: int = 0) -> str:
    """Block until the run has its Ray up, ``committed`` input files done and a stage-1 write under way;
    return its session dir."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()[1][-3000:]}"
        record = out / "_work" / RECORD
        if (record.exists() and any((out / "_work").glob("staging-*"))
                and len(list((out / "_work").glob("stage1/*/_SUCCESS"))) >= committed):
            return json.loads(record.read_text())["session_dir"]
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the run never reached stage 1")


def _reaper_of(proc: subprocess.Popen) -> psutil.Process:
    [reaper] = [c for c in psutil.Process(proc.pid).children() if "data_pipeline.ray_session" in c.cmdline()]
    return reaper


def _left(session_dir: str, within: float) -> list[str]:
    """Processes of the session still alive after waiting up to ``within`` seconds for them to go."""
    deadline = time.monotonic() + within
    while True:
        left = [f"{p.name()}({p.pid})" for p in session_processes(session_dir)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.25)


@pytest.mark.slow  # three CLI runs, each starting a Ray cluster: 40 s idle, 2 min on a loaded 2-core box
def test_sigkilled_driver_leaves_no_ray_processes_and_the_next_run_finishes(tmp_path):
    records = write_small_corpus(tmp_path / "in", per_file=8)
    out = tmp_path / "out"

    # 1. kill the driver: its reaper stops the whole Ray session
    first = _start(tmp_path / "in", out)
    session1 = _wait_mid_stage1(first, out)
    reaper1 = _reaper_of(first)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert _left(session1, within=15) == []
    reaper1.wait(15)
    assert not (out / "report.json").exists()  # killed mid-run, not after

    # 2. kill the driver and its reaper together (a kill of every process of the run): the record
    # left in _work is how the next run finds what remains of this session
    second = _start(tmp_path / "in", out)
    session2 = _wait_mid_stage1(second, out, committed=1)
    reaper2 = _reaper_of(second)
    reaper2.kill()
    os.kill(second.pid, signal.SIGKILL)
    second.wait()
    time.sleep(1.0)  # gcs_server and raylet die with the driver (PR_SET_PDEATHSIG); the agents would not
    orphans = [f"{p.name()}({p.pid})" for p in session_processes(session2)]

    # 3. the next run stops the orphans (and says so), resumes and finishes with the report intact
    third = _start(tmp_path / "in", out)
    stdout, stderr = third.communicate(timeout=600)
    assert third.returncode == 0, stderr[-3000:]
    assert _left(session2, within=5) == []
    if orphans:
        assert "left by an earlier run of this output whose driver" in stderr, stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["input"] == len(records)
    assert report["input"] == report["kept"] + report["heldout"] + report["dropped_total"] + report["quarantined"]
    assert report["stage1"]["files_reused"] >= 1  # the killed runs' committed files were kept
    ids = [r["doc_id"] for split in ("shards", "heldout") for r in output_rows(out, split)]
    assert len(ids) == len(set(ids)) == report["kept"] + report["heldout"]
    assert not (out / "_work" / RECORD).exists()  # a clean exit removes the record
