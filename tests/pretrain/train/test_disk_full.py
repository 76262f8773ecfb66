"""A disk that fills up for real (issue 22): a small tmpfs under the run dir, filled during a
checkpoint save and during a metrics.jsonl write. Each case ends with the run resumed by a plain
rerun once there is space again (no file edited by hand), from the last good checkpoint, every
step logged once.

Real single-process ``python -m pretrain`` runs (tiny model, gloo world 1). Mounting needs root
(CAP_SYS_ADMIN); elsewhere the tests are skipped saying so.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.launch import REPO_ROOT
from tests.helpers.synthetic_data import make_indexed_dataset
from tests.pretrain.test_cli import clean_env, pretrain_cmd

pytestmark = pytest.mark.timeout(600)

RUN = ["train.eval_interval=0", "checkpoint.keep_last=10"]
MiB = 1 << 20


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_indexed_dataset(tmp_path_factory.mktemp("data"))


def _mount(target: Path, size: int, remount: bool = False) -> subprocess.CompletedProcess:
    opts = f"remount,size={size}" if remount else f"size={size}"
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(target)], capture_output=True, text=True)


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A fresh tmpfs of 6 MiB (one tiny-model checkpoint is ~4 MB), unmounted afterwards."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN); run as root to test a real full disk")
    out = _mount(mnt, 6 * MiB)
    if out.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here: {out.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def grow(mnt: Path, size: int) -> None:
    """What the operator does about a full disk: make room (here, by growing the tmpfs)."""
    out = _mount(mnt, size, remount=True)
    assert out.returncode == 0, out.stderr


def pretrain(data_dir: Path, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(pretrain_cmd(data_dir, run_dir, *RUN, *overrides), cwd=REPO_ROOT, env=clean_env(),
                          capture_output=True, text=True, timeout=400)


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]  # every line whole


def steps_of(rows: list[dict]) -> list[int]:
    return [r["step"] for r in rows if r.get("event") is None and "loss" in r]


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_disk_full_during_a_checkpoint_save(data_dir, small_disk, async_save):
    """Async: the writer's error surfaces when the save is finalised (the next poll or save)."""
    run_dir = small_disk / "run"
    run = ["train.train_iters=6", "train.lr_decay_iters=6", "checkpoint.save_interval=2",
           f"checkpoint.async_save={str(async_save).lower()}"]
    # 6 MiB holds the step-2 checkpoint (~4 MB) but not the step-4 one next to it
    out = pretrain(data_dir, run_dir, *run)
    assert out.returncode != 0
    checkpoints = run_dir / "checkpoints"
    err = out.stderr
    assert f"saving checkpoint {checkpoints / 'iter_0000004'} failed" in err, err[-4000:]
    assert "the filesystem is full" in err and "`latest` names iter_0000002" in err, err[-4000:]
    assert (checkpoints / "latest").read_text().strip() == "iter_0000002"
    assert not (checkpoints / "iter_0000004").exists()  # the partial save is gone: its space is free again
    assert sorted(p.name for p in checkpoints.iterdir()) == ["iter_0000002", "latest"]  # no empty next one
    events = [r for r in rows_of(run_dir / "metrics.jsonl") if r.get("event") == "checkpoint"]
    assert [e["step"] for e in events] == [2]  # no event for the save that failed

    grow(small_disk, 24 * MiB)
    out = pretrain(data_dir, run_dir, *run)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert f"resumed from {checkpoints / 'iter_0000002'} at step 2" in out.stdout
    assert steps_of(rows_of(run_dir / "metrics.jsonl")) == [1, 2, 3, 4, 5, 6]
    assert (checkpoints / "latest").read_text().strip() == "iter_0000006"


def _fill_when(path: Path, has_step: int, mnt: Path, stop: threading.Event) -> None:
    """Once ``path`` logs step ``has_step``, write a file until the disk is full (the run goes on writing)."""
    while not stop.is_set():
        try:
            if f'"step": {has_step},' in path.read_text():
                break
        except FileNotFoundError:
            pass
        time.sleep(0.002)
    else:
        return
    with open(mnt / "filler", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


@pytest.mark.slow  # three runs, one of up to 200 steps: 45 s idle, 110 s on a loaded 2-core box
def test_disk_full_during_a_metrics_write(data_dir, small_disk):
    run_dir = small_disk / "run"
    base = ["train.lr_decay_iters=200", "checkpoint.save_interval=0", "checkpoint.async_save=false"]
    grow(small_disk, 16 * MiB)
    out = pretrain(data_dir, run_dir, *base, "train.train_iters=4")  # ends with its checkpoint at step 4
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    metrics = run_dir / "metrics.jsonl"

    stop = threading.Event()
    filler = threading.Thread(target=_fill_when, args=(metrics, 6, small_disk, stop))
    filler.start()
    try:
        out = pretrain(data_dir, run_dir, *base, "train.train_iters=200")
    finally:
        stop.set()
        filler.join()
    assert out.returncode != 0, "the run did not notice the full disk"
    assert "No space left on device" in out.stderr, out.stderr[-4000:]
    assert "in append_jsonl" in out.stderr, out.stderr[-4000:]  # it was a metrics.jsonl row that failed
    raw = metrics.read_bytes()
    torn = not raw.endswith(b"\n")
    crashed_at = max(steps_of([json.loads(line) for line in raw.decode().splitlines()[:-1 if torn else None]]))
    assert 6 <= crashed_at < 200

    (small_disk / "filler").unlink()  # room again; nothing in the run dir is touched
    out = pretrain(data_dir, run_dir, *base, "train.train_iters=12")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert f"resumed from {run_dir / 'checkpoints' / 'iter_0000004'} at step 4" in out.stdout
    rows = rows_of(metrics)  # every line parses: a torn one was repaired
    assert steps_of(rows) == list(range(1, 13))  # each step once: rows 5..crash dropped, retrained
    repaired = [r for r in rows if r.get("event") == "log_repaired"]
    assert len(repaired) == int(torn), (torn, repaired)
