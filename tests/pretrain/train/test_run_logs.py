"""metrics.jsonl survives crashes and restarts (issue 22): a torn last line is repaired on
resume and reported, a fresh start sets the old run's rows aside, and a ``checkpoint`` event
is written only once its save is complete on disk (async saves included).

Real single-process ``python -m pretrain`` runs (tiny model, a few steps, gloo world 1).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.launch import REPO_ROOT
from tests.helpers.synthetic_data import make_indexed_dataset
from tests.pretrain.test_cli import clean_env, pretrain_cmd

pytestmark = pytest.mark.timeout(600)

RUN = ["train.eval_interval=0", "checkpoint.async_save=false", "checkpoint.keep_last=10"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_indexed_dataset(tmp_path_factory.mktemp("data"))


def train(data_dir: Path, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    out = subprocess.run(pretrain_cmd(data_dir, run_dir, *RUN, *overrides), cwd=REPO_ROOT, env=clean_env(),
                         capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]  # every line whole


def steps_of(rows: list[dict]) -> list[int]:
    return [r["step"] for r in rows if r.get("event") is None]


@pytest.fixture(scope="module")
def four_steps(data_dir, tmp_path_factory) -> Path:
    """A finished 4-step run with a checkpoint at step 4 (each test works on a copy)."""
    run_dir = tmp_path_factory.mktemp("four") / "run"
    train(data_dir, run_dir, "train.train_iters=4", "checkpoint.save_interval=4")
    return run_dir


def test_torn_last_line_is_repaired_on_resume_and_reported(data_dir, four_steps, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(four_steps, run_dir)
    metrics = run_dir / "metrics.jsonl"
    lines_before = len(metrics.read_text().splitlines())
    with open(metrics, "a") as f:  # the disk filled up in the middle of the step-5 row
        f.write('{"step": 5, "loss": 6.12, "grad_n')
    spikes = run_dir / "spikes.jsonl"
    spikes.write_text(json.dumps({"event": "spike_observed", "step": 3}) + "\n" + '{"event": "spi')

    out = train(data_dir, run_dir, "train.train_iters=6")
    rows = rows_of(metrics)
    assert steps_of(rows) == [1, 2, 3, 4, 5, 6]
    repaired = [r for r in rows if r.get("event") == "log_repaired"]
    assert {(Path(r["file"]).name, r["line"]) for r in repaired} == {("metrics.jsonl", lines_before + 1),
                                                                      ("spikes.jsonl", 2)}
    events = [r.get("event") for r in rows]
    assert events.index("log_repaired") == events.index("resume") + 1  # right after this run's resume row
    assert f"metrics.jsonl:{lines_before + 1} was a torn line" in out.stderr
    assert rows_of(spikes) == [{"event": "spike_observed", "step": 3}]  # only the torn row dropped
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 6


def test_resume_drops_rows_after_the_checkpoint(data_dir, four_steps, tmp_path):
    """A crash after step 4's checkpoint left rows 5..6: the resumed run logs them once."""
    run_dir = tmp_path / "run"
    shutil.copytree(four_steps, run_dir)
    metrics = run_dir / "metrics.jsonl"
    extra = [{"step": s, "loss": 9.9} for s in (5, 6)]
    metrics.write_text(metrics.read_text() + "".join(json.dumps(r) + "\n" for r in extra))
    train(data_dir, run_dir, "train.train_iters=6")
    rows = rows_of(metrics)
    assert steps_of(rows) == [1, 2, 3, 4, 5, 6]
    assert 9.9 not in [r.get("loss") for r in rows]


def test_fresh_start_sets_the_old_rows_aside(data_dir, four_steps, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(four_steps, run_dir)
    old = (run_dir / "metrics.jsonl").read_text()
    out = train(data_dir, run_dir, "train.train_iters=3", "checkpoint.load=none")
    rows = rows_of(run_dir / "metrics.jsonl")
    assert steps_of(rows) == [1, 2, 3]  # each step once, this run's
    assert [r["event"] for r in rows if r.get("event")][:2] == ["start", "log_set_aside"]
    (aside,) = run_dir.glob("metrics.jsonl.prev-*")
    assert aside.read_text() == old
    assert [r for r in rows if r.get("event") == "log_set_aside"][0]["moved_to"] == str(aside)
    assert "metrics.jsonl was moved to" in out.stderr


def test_async_checkpoint_event_only_after_the_save_completed(data_dir, tmp_path):
    """A watcher reads metrics.jsonl while the run trains: whenever a ``checkpoint`` event
    appears, that checkpoint must already be finalised (run_config.yaml written, which the
    writer does after every rank's files are on disk, just before moving ``latest``)."""
    run_dir = tmp_path / "run"
    metrics = run_dir / "metrics.jsonl"
    early: list[str] = []
    seen: set[int] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if metrics.is_file():
                for line in metrics.read_text().splitlines():
                    if '"event": "checkpoint"' not in line:
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:  # caught mid-write: read again next round
                        continue
                    if row["step"] not in seen:
                        seen.add(row["step"])
                        if not (Path(row["path"]) / "run_config.yaml").is_file():
                            early.append(line)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        train(data_dir, run_dir, "train.train_iters=8", "checkpoint.save_interval=2", "checkpoint.async_save=true")
    finally:
        done.set()
        watcher.join()
    rows = rows_of(metrics)
    events = [r for r in rows if r.get("event") == "checkpoint"]
    assert [r["step"] for r in events] == [2, 4, 6, 8]
    assert not early, f"checkpoint events logged before the save was finalised: {early}"
    order = [(r.get("event"), r["step"]) for r in rows]
    for r in events[:-1]:  # an async save is finalised at a later step's poll at the earliest
        assert order.index(("checkpoint", r["step"])) > order.index((None, r["step"] + 1)), order
