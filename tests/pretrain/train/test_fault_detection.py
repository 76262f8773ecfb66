"""The hang watchdog and the straggler report (docs/fault_tolerance.md), in one real run.

One 2-rank gloo run under ``torchrun --max-restarts=1`` covers both detectors (process
start-up dominates on CPU): rank 1 burns extra CPU every step (``inject_slow_rank``) and
SIGSTOPs itself when step 5 begins (``inject_hang_rank``). The run must name rank 1 as a
straggler, then notice the hang within ``hang_timeout_s``, name rank 1 (host, pid), exit
79, be restarted by torchrun, resume from the step-4 checkpoint and finish with every step
logged once. The pure rules are tested without processes below.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from pretrain.train.callbacks.hang_watchdog import HANG_EXIT_CODE
from pretrain.train.callbacks.heartbeats import Heartbeat, kill_if_sibling, suspects
from pretrain.train.callbacks.stragglers import find_stragglers
from tests.helpers.launch import REPO_ROOT, skip_unless_ranks_fit
from tests.helpers.synthetic_data import make_indexed_dataset
from tests.pretrain.test_cli import clean_env
from tests.pretrain.train.trainer_worker import SHORT_RUN, SMALL_MODEL

# Well above a step of this run on a 2-core box shared with other work (3 s fired on a slow
# step at load average 58): a timeout shorter than the slowest normal step restarts healthy runs.
HANG_TIMEOUT_S = 10.0
HANG_STEP = 5
RUN = [
    "parallel=dp2", "train.train_iters=8", "train.lr_decay_iters=8", "train.eval_interval=0",
    "checkpoint.save_interval=4",
    f"train.fault.hang_timeout_s={HANG_TIMEOUT_S}", "train.fault.slow_timeout_s=120",
    "train.fault.collective_timeout_s=300",
    "train.fault.straggler_interval=2", "train.fault.straggler_factor=1.5",
    "train.fault.inject_slow_rank=1", "train.fault.inject_delay_s=0.3",
    "train.fault.inject_hang_rank=1", f"train.fault.inject_hang_step={HANG_STEP}",
]


def tagged(text: str, tag: str) -> list[dict]:
    """The JSON of every ``TAG {json}`` line (the machine-readable lines the detectors print)."""
    return [json.loads(line.split(tag + " ", 1)[1]) for line in text.splitlines() if f"{tag} {{" in line]


@pytest.fixture(scope="module")
def hung_run(tmp_path_factory) -> dict:
    skip_unless_ranks_fit(2)
    data_dir = make_indexed_dataset(tmp_path_factory.mktemp("data"))
    run_dir = tmp_path_factory.mktemp("hang") / "run"
    # --standalone: a c10d rendezvous, as launch/local.py and the Slurm script use
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
           "-m", "pretrain", f"data.path={data_dir}", f"run_dir={run_dir}", *SMALL_MODEL, *SHORT_RUN, *RUN]
    started = time.time()
    # as launch/local.py sets it: without it the restarted group reads the first attempt's store keys
    env = {**clean_env(), "PYTHONPATH": str(REPO_ROOT), "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    out = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    (run_dir.parent / "stdout.txt").write_text(out.stdout)
    (run_dir.parent / "stderr.txt").write_text(out.stderr)
    wall = time.time() - started
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    print(f"hung run: {wall:.1f} s wall, exit {out.returncode}")
    return {"out": out, "rows": rows, "wall_s": wall, "run_dir": run_dir}


@pytest.mark.multiproc
def test_a_frozen_rank_is_named_and_the_run_restarts_from_its_checkpoint(hung_run):
    out, rows = hung_run["out"], hung_run["rows"]
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    injected = tagged(out.stderr, "FAULT_INJECT")
    assert len(injected) == 1 and injected[0]["rank"] == 1 and injected[0]["step"] == HANG_STEP, injected

    hangs = [r for r in rows if r.get("event") == "hang"]
    assert len(hangs) == 1, hangs                       # one row per attempt, kept through the resume
    hang = hangs[0]
    assert hang["kind"] == "frozen" and hang["exit_code"] == HANG_EXIT_CODE
    named = hang["ranks"]
    assert [(r["rank"], r["host"], r["pid"]) for r in named] == [(1, socket.gethostname(), injected[0]["pid"])]
    # its last heartbeat: written when step 5 began, unless the freeze came first (a heavily loaded box)
    assert (named[0]["step"], named[0]["phase"]) in ((HANG_STEP, "step"), (HANG_STEP - 1, "after_step")), named
    assert named[0]["last_beat_age_s"] >= HANG_TIMEOUT_S / 2
    assert hang["detected_by"]["rank"] == 0 and hang["step"] == HANG_STEP and hang["phase"] == "step"
    # after the timeout plus at most one watchdog poll (2.5 s) and scheduling slack, not the collective's
    # 300 s. Rank 0's clock starts when it enters step 5, up to the 0.3 s burn before rank 1 froze.
    assert hang["detected_after_s"] >= HANG_TIMEOUT_S
    latency = hang["time"] - injected[0]["time"]
    # the detector counts from when ITS step stopped moving, which can be before the injected rank
    # froze (rank 0 entered the step and waited for rank 1): up to a step's time under the timeout
    assert HANG_TIMEOUT_S / 2 <= latency < HANG_TIMEOUT_S + 6, latency
    assert hang in tagged(out.stderr, "HANG")           # the stderr line carries the same JSON
    assert f"exitcode: {HANG_EXIT_CODE}" in out.stderr.replace("exitcode : ", "exitcode: ")

    # restarted: resumed from the step-4 checkpoint, every step exactly once
    resumes = [r for r in rows if r.get("event") == "resume"]
    assert [r["step"] for r in resumes] == [4], resumes
    steps = [r["step"] for r in rows if r.get("event") is None]
    assert steps == list(range(1, 9)), steps
    restart_s = resumes[0]["time"] - hang["time"]
    print(f"detection latency {latency:.2f} s (timeout {HANG_TIMEOUT_S} s); hang row -> resume row {restart_s:.1f} s; "
          f"run {hung_run['wall_s']:.1f} s")


@pytest.mark.multiproc
def test_the_slow_rank_is_named_in_a_stragglers_row(hung_run):
    rows = hung_run["rows"]
    reports = [r for r in rows if r.get("event") == "stragglers"]
    assert reports, "no stragglers row"
    for report in reports:
        assert [s["rank"] for s in report["stragglers"]] == [1], report
        assert report["stragglers"][0]["host"] == socket.gethostname()
        assert report["stragglers"][0]["ratio"] > 1.5 and report["step"] % 2 == 0
    assert len(tagged(hung_run["out"].stdout, "STRAGGLERS")) >= len(reports)


def test_straggler_rule_compares_with_the_lower_median():
    assert find_stragglers([1.0, 1.1, 0.9, 3.0], 1.5) == (1.0, [3])
    assert find_stragglers([0.2, 0.7], 1.5) == (0.2, [1])        # 2 ranks: the other rank is the yardstick
    assert find_stragglers([0.2, 0.29], 1.5) == (0.2, [])
    assert find_stragglers([1.0, 1.0, 1.0], 1.5) == (1.0, [])
    assert find_stragglers([0.0, 0.0], 1.5) == (0.0, [])           # nothing measured: nobody named
    assert find_stragglers([], 1.5) == (0.0, [])


def _beat(rank: int, step: int, phase: str, beat_time: float) -> Heartbeat:
    return Heartbeat(rank, "h", 100 + rank, "none/0", step, phase, beat_time - 1, beat_time)


def test_hang_suspects_from_heartbeats():
    now = 1000.0
    alive = {r: _beat(r, 7, "step", now - 1) for r in range(4)}
    assert suspects(alive, now, 5) == ("collective", [0, 1, 2, 3])
    assert suspects({**alive, 2: _beat(2, 7, "step", now - 9)}, now, 5) == ("frozen", [2])
    assert suspects({**alive, 3: None}, now, 5) == ("frozen", [3])     # never beat in this attempt
    assert suspects({**alive, 1: _beat(1, 6, "after_step", now - 1)}, now, 5) == ("behind", [1])


KILLER = ("import socket, sys; from pretrain.train.callbacks.heartbeats import kill_if_sibling; "
          "h = socket.gethostname(); sys.exit(0 if kill_if_sibling(int(sys.argv[1]), h, h) else 3)")


def test_only_a_sibling_on_this_host_is_killed():
    """The watchdog kills a frozen peer only when it is a child of the same agent on this host."""
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert not kill_if_sibling(victim.pid, socket.gethostname(), socket.gethostname())  # a child, not a sibling
        assert not kill_if_sibling(victim.pid, "elsewhere", socket.gethostname())
        assert victim.poll() is None
        killer = subprocess.run([sys.executable, "-c", KILLER, str(victim.pid)], cwd=REPO_ROOT,
                                env={**clean_env(), "PYTHONPATH": str(REPO_ROOT)}, timeout=60)
        assert killer.returncode == 0       # same parent (this test), same host: killed
        assert victim.wait(timeout=10) == -9
    finally:
        victim.kill()
        victim.wait()


DETECTOR = ("import socket, sys; from pretrain.train.callbacks.heartbeats import exit_then_kill; "
            f"h = socket.gethostname(); exit_then_kill([(int(sys.argv[1]), h)], h, {HANG_EXIT_CODE})")


def test_the_hang_exit_is_observed_before_the_frozen_sibling_dies():
    """torchrun blames the first failure it observes: the detector's exit must come first.

    This test plays the agent: both processes are its children, the victim is SIGSTOPped, and
    the detector exits 79. When ``wait`` sees that exit the victim must still be alive (its
    SIGKILL comes from the detector's forked child after ``grace_s``), and then it must die.
    Killing before exiting, or a child that did not wait, made torchrun report ``exitcode: -9``.
    """
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.kill(victim.pid, signal.SIGSTOP)
        detector = subprocess.Popen([sys.executable, "-c", DETECTOR, str(victim.pid)], cwd=REPO_ROOT,
                                    env={**clean_env(), "PYTHONPATH": str(REPO_ROOT)})
        assert detector.wait(timeout=60) == HANG_EXIT_CODE
        assert victim.poll() is None, "the sibling died before the agent could see the hang exit"
        assert victim.wait(timeout=10) == -signal.SIGKILL
    finally:
        victim.kill()
        victim.wait()


def test_local_launcher_passes_max_restarts(tmp_path):
    """``cluster.max_restarts`` reaches torchrun, so a watchdog exit restarts the group."""
    out = subprocess.run([sys.executable, "-m", "launch", "stage=launch.probe", "cluster=local", "cluster.max_restarts=2",
                          f"run_dir={tmp_path}", "parallel=dp2", "dry_run=true"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    command = out.stdout.split("# command\n", 1)[1].split()
    assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--max-restarts=2"], command


def test_a_resume_keeps_the_hang_row_and_drops_later_steps(tmp_path):
    """The restart truncates metrics.jsonl to its checkpoint; the hang is history and stays."""
    from pretrain.train.monitor import truncate_metrics

    rows = [{"step": 3, "loss": 1.0}, {"step": 4, "loss": 1.0}, {"step": 5, "loss": 1.0},
            {"event": "stragglers", "step": 6}, {"event": "hang", "step": 7, "kind": "frozen"}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    truncate_metrics(tmp_path, 4)
    kept = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert kept == [rows[0], rows[1], rows[4]]


def test_fault_keys_are_validated():
    from omegaconf import OmegaConf

    from pretrain.config.validate import fault_detection_errors

    good = {"hang_timeout_s": 300, "slow_timeout_s": 1200, "collective_timeout_s": 1800, "straggler_interval": 100,
            "straggler_factor": 1.5, "inject_delay_s": 0.0}
    assert fault_detection_errors(OmegaConf.create({"train": {"fault": good}})) == []
    bad = {**good, "slow_timeout_s": 60, "collective_timeout_s": 0, "straggler_factor": 1.0, "inject_delay_s": -1}
    errors = fault_detection_errors(OmegaConf.create({"train": {"fault": bad}}))
    assert [e.split("=")[0] for e in errors] == ["train.fault.slow_timeout_s", "train.fault.collective_timeout_s",
                                                 "train.fault.straggler_factor", "train.fault.inject_delay_s"]
