"""Checkpoints you can trust (issue 22): a damaged shard is detected, named, and never trained on.

Real ``python -m pretrain`` runs (1 process, tiny model): one run writes checkpoints at steps
2, 4 and 6; each case copies that run dir, damages the newest checkpoint's largest shard and
resumes. ``checkpoint.load=auto`` must reject it (event row naming the file, directory moved to
checkpoints_rejected/, ``latest`` moved), resume from step 4 and finish; an explicit
``checkpoint.load=<dir>`` must fail naming the file; ``python -m pretrain.checkpoint verify``
must tell a good checkpoint from a damaged one offline.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.launch import REPO_ROOT
from tests.helpers.synthetic_data import make_indexed_dataset
from tests.pretrain.test_cli import clean_env, pretrain_cmd

RUN = ["parallel=single", "train.train_iters=6", "train.lr_decay_iters=6", "checkpoint.save_interval=2",
       "checkpoint.keep_last=10", "checkpoint.async_save=false", "train.eval_interval=0"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_indexed_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir) -> Path:
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    out = subprocess.run(pretrain_cmd(data_dir, run_dir, *RUN), cwd=REPO_ROOT, env=clean_env(),
                         capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "iter_0000006"
    return run_dir


def copy_run(trained: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    return run_dir


def largest_shard(checkpoint: Path) -> Path:
    return max(checkpoint.glob("*.distcp"), key=lambda p: p.stat().st_size)


def overwrite_in_place(path: Path) -> None:
    """Same size, different bytes (a bad disk block, a stray writer)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = b"\xff" * len(data[middle:middle + 4096])
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def resume(data_dir: Path, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(pretrain_cmd(data_dir, run_dir, *RUN, "train.train_iters=8", "train.lr_decay_iters=8",
                                       *overrides),
                          cwd=REPO_ROOT, env=clean_env(), capture_output=True, text=True, timeout=400)


def assert_fell_back(run_dir: Path, shard: str, out: subprocess.CompletedProcess) -> None:
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rejected = [r for r in rows if r.get("event") == "checkpoint_rejected"]
    assert len(rejected) == 1, rejected
    assert rejected[0]["file"] == shard and rejected[0]["path"].endswith("iter_0000006"), rejected[0]
    assert rejected[0]["fallback"] == "iter_0000004" and rejected[0]["step"] == 4
    assert shard in out.stderr and "iter_0000006" in out.stderr
    assert "resumed from" in out.stdout and "iter_0000004 at step 4" in out.stdout, out.stdout[-2000:]
    # moved aside, kept for a post-mortem; latest moved on (and the run saved past it)
    assert (run_dir / "checkpoints_rejected" / "iter_0000006" / shard).is_file()
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "iter_0000008"
    steps = [r["step"] for r in rows if r.get("event") is None and "loss" in r]
    assert steps == list(range(1, 9)), steps  # steps 5-6 of the abandoned trajectory truncated, retrained
    assert all(r["loss"] == r["loss"] and r["loss"] < 20 for r in rows if "loss" in r)  # no NaN
    verdict = subprocess.run([sys.executable, "-m", "pretrain.checkpoint", "verify",
                              str(run_dir / "checkpoints" / "iter_0000008")],
                             cwd=REPO_ROOT, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert verdict.returncode == 0 and verdict.stdout.startswith("OK "), verdict.stdout + verdict.stderr[-2000:]


def test_shard_overwritten_in_place_is_rejected_and_run_resumes_from_previous(trained, data_dir, tmp_path):
    run_dir = copy_run(trained, tmp_path)
    shard = largest_shard(run_dir / "checkpoints" / "iter_0000006")
    overwrite_in_place(shard)
    assert_fell_back(run_dir, shard.name, resume(data_dir, run_dir))


def test_truncated_shard_is_rejected_and_run_resumes_from_previous(trained, data_dir, tmp_path):
    run_dir = copy_run(trained, tmp_path)
    shard = largest_shard(run_dir / "checkpoints" / "iter_0000006")
    truncate(shard)
    assert_fell_back(run_dir, shard.name, resume(data_dir, run_dir))


def test_explicit_load_of_a_damaged_checkpoint_fails_naming_the_file(trained, data_dir, tmp_path):
    run_dir = copy_run(trained, tmp_path)
    checkpoint = run_dir / "checkpoints" / "iter_0000006"
    shard = largest_shard(checkpoint)
    truncate(shard)
    out = resume(data_dir, tmp_path / "other_run", f"checkpoint.load={checkpoint}")
    assert out.returncode != 0
    assert str(shard) in out.stdout + out.stderr, out.stderr[-4000:]
    assert checkpoint.is_dir()  # an explicit load is never moved aside


def verify(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pretrain.checkpoint", "verify", *map(str, paths)],
                          cwd=REPO_ROOT, env=clean_env(), capture_output=True, text=True, timeout=120)


def test_verify_cli_tells_good_damaged_and_unverifiable_apart(trained, tmp_path):
    good = trained / "checkpoints" / "iter_0000004"
    out = verify(good)
    assert out.returncode == 0 and out.stdout.startswith(f"OK {good}"), out.stdout + out.stderr[-3000:]
    record = json.loads((good / "integrity.json").read_text())
    assert {"metadata.json", "common.pt", "run_config.yaml", ".metadata"} <= set(record["files"])

    run_dir = copy_run(trained, tmp_path)
    overwritten = largest_shard(run_dir / "checkpoints" / "iter_0000004")
    overwrite_in_place(overwritten)
    truncated = largest_shard(run_dir / "checkpoints" / "iter_0000006")
    truncate(truncated)
    out = verify(run_dir / "checkpoints")  # every iter_* under a checkpoints/ root
    assert out.returncode == 1, out.stdout + out.stderr[-3000:]
    assert f"BAD {overwritten}: content changed" in out.stdout, out.stdout
    assert f"BAD {truncated}: size" in out.stdout, out.stdout
    assert f"OK {run_dir / 'checkpoints' / 'iter_0000002'}" in out.stdout, out.stdout

    legacy = run_dir / "checkpoints" / "iter_0000002"
    (legacy / "integrity.json").unlink()  # a checkpoint saved before integrity records
    out = verify(legacy)
    assert out.returncode == 0 and out.stdout.startswith(f"UNVERIFIABLE {legacy}"), out.stdout


def test_a_load_error_no_file_is_blamed_for_raises_and_moves_nothing(trained, data_dir, tmp_path):
    """Intact files, a model config that no longer fits them: an older checkpoint would not
    load either, so auto-resume must fail loudly instead of moving every checkpoint aside."""
    run_dir = copy_run(trained, tmp_path)
    out = resume(data_dir, run_dir, "model.ffn_hidden_size=256")
    assert out.returncode != 0
    assert "every file matches integrity.json" in out.stdout + out.stderr, out.stderr[-4000:]
    assert not (run_dir / "checkpoints_rejected").exists()
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "iter_0000006"


def test_latest_naming_a_missing_directory_falls_back_to_the_newest_finalised_one(tmp_path):
    from pretrain.config.resolve import latest_checkpoint

    root = tmp_path / "checkpoints"
    for name in ("iter_0000002", "iter_0000004"):
        (root / name).mkdir(parents=True)
        (root / name / "run_config.yaml").write_text("{}\n")
    (root / "iter_0000005").mkdir()  # a save that never finalised: never loaded automatically
    (root / "latest").write_text("iter_0000006\n")  # moved aside or deleted by hand
    assert latest_checkpoint(tmp_path) == root / "iter_0000004"
    (root / "latest").write_text("iter_0000004\n")
    assert latest_checkpoint(tmp_path) == root / "iter_0000004"
    (root / "latest").write_text("iter_0000001\n")
    assert latest_checkpoint(tmp_path) is None


def test_truncated_shard_of_a_checkpoint_without_integrity_record_is_named_and_skipped(trained, data_dir, tmp_path):
    """A checkpoint saved before integrity.json existed: dist_checkpointing's EOFError is
    re-raised naming the file a size check against .metadata finds short; auto-resume falls back."""
    run_dir = copy_run(trained, tmp_path)
    for checkpoint in (run_dir / "checkpoints").glob("iter_*"):
        (checkpoint / "integrity.json").unlink()
    shard = largest_shard(run_dir / "checkpoints" / "iter_0000006")
    truncate(shard)
    out = resume(data_dir, run_dir)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rejected = [r for r in rows if r.get("event") == "checkpoint_rejected"]
    assert len(rejected) == 1 and rejected[0]["file"] == shard.name, rejected
    assert "truncated" in rejected[0]["reason"] and "load failed" in rejected[0]["reason"], rejected[0]
    assert rejected[0]["fallback"] == "iter_0000004"
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "iter_0000008"
