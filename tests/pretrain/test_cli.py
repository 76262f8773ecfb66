"""``python -m pretrain`` end to end: validation before launch, local relaunch, run_dir layout,
and a run killed while saving resumes from the last complete checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.launch import REPO_ROOT
from tests.helpers.synthetic_data import make_indexed_dataset
from tests.pretrain.train.trainer_worker import SHORT_RUN, SMALL_MODEL

METRIC_KEYS = {"step", "loss", "grad_norm", "lr", "tokens_per_s", "consumed_samples", "tflops_per_gpu",
               "mfu", "mem_gb", "elapsed_s"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_indexed_dataset(tmp_path_factory.mktemp("data"))


def pretrain_cmd(data_dir: Path, run_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "pretrain", f"data.path={data_dir}", f"run_dir={run_dir}",
            *SMALL_MODEL, *SHORT_RUN, *overrides]


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


def test_bad_config_fails_before_any_process_starts(data_dir, tmp_path):
    out = subprocess.run(pretrain_cmd(data_dir, tmp_path / "run", "parallel=tp2", "model.num_attention_heads=3",
                                      "model.num_query_groups=3"),
                         cwd=REPO_ROOT, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "model.num_attention_heads=3" in out.stderr and "launching" not in out.stdout
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.multiproc
def test_relaunches_itself_for_dp2_and_writes_the_run_dir(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    out = subprocess.run(pretrain_cmd(data_dir, run_dir, "parallel=dp2", "train.train_iters=6",
                                      "checkpoint.save_interval=4", "train.eval_interval=3"),
                         cwd=REPO_ROOT, env=clean_env(), capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "launching 2 local processes" in out.stdout
    assert f"run dir: {run_dir}" in out.stdout
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r.get("event") is None]
    assert [r["step"] for r in steps] == list(range(1, 7))
    assert METRIC_KEYS <= set(steps[0]), set(steps[0])
    assert steps[0]["mfu"] is None  # no known peak on CPU
    assert steps[-1]["consumed_samples"] == 6 * 8
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["checkpoints"] == ["iter_0000004", "iter_0000006"]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "iter_0000006"
    assert (run_dir / "checkpoints" / "iter_0000006" / "run_config.yaml").is_file()
    assert (run_dir / "config.yaml").is_file() and (run_dir / "loss.png").stat().st_size > 1000
    assert any(p.is_dir() for p in (run_dir / "hydra").iterdir())


def test_kill_during_save_leaves_previous_checkpoint_loadable(data_dir, tmp_path):
    """SIGKILL the trainer as soon as a new checkpoint directory appears (mid-save),
    then resume: the run continues from the checkpoint ``latest`` names."""
    run_dir = tmp_path / "run"
    args = ["train.train_iters=400", "train.lr_decay_iters=400", "checkpoint.save_interval=3",
            "checkpoint.async_save=false", "checkpoint.keep_last=10", "train.eval_interval=0"]
    proc = subprocess.Popen(pretrain_cmd(data_dir, run_dir, *args), cwd=REPO_ROOT, env=clean_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    root = run_dir / "checkpoints"
    killed_mid_save = False
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            latest = (root / "latest").read_text().strip() if (root / "latest").is_file() else None
            newest = sorted(root.glob("iter_*"))[-1].name if root.is_dir() and list(root.glob("iter_*")) else None
            if latest and newest and newest > latest:  # a save is in progress
                os.killpg(proc.pid, signal.SIGKILL)
                killed_mid_save = not (root / newest / "metadata.json").is_file()
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert latest is not None, "the run never completed a first checkpoint"
    marker = (root / "latest").read_text().strip()
    assert marker == latest and marker < newest, (marker, newest, killed_mid_save)
    resumed_from = int(marker.split("_")[1])
    out = subprocess.run(pretrain_cmd(data_dir, run_dir, *args[1:], f"train.train_iters={resumed_from + 2}"),
                         cwd=REPO_ROOT, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    assert f"at step {resumed_from}" in out.stdout
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("event") is None][-2:] == [resumed_from + 1, resumed_from + 2]
