"""DeepSpeed checkpoints (``checkpoints_ds/``) carry integrity.json too: 2 real processes (ZeRO-1,
DP2), so the hashing and the verification are split over ranks and gathered. A truncated file in
the newest checkpoint is rejected on resume and the run continues from the previous one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.launch import REPO_ROOT
from tests.helpers.synthetic_data import make_indexed_dataset
from tests.pretrain.train.trainer_worker import SMALL_MODEL

pytestmark = pytest.mark.multiproc

RUN = ["parallel=dp2", "backend=deepspeed", "deepspeed.zero_stage=1",
       "train.micro_batch_size=2", "train.global_batch_size=8", "train.lr_warmup_iters=1",
       "data.train_samples=80", "train.eval_interval=0", "train.log_interval=0", "checkpoint.save_interval=2",
       "checkpoint.keep_last=10", "checkpoint.async_save=false", "logging.wandb.mode=disabled",
       "logging.progress=false", "train.heldout_max_documents=2"]


def launch(work: Path, run_dir: Path, iters: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "WANDB_MODE")}
    env.update(OMP_NUM_THREADS="1", PRETRAIN_DS_NO_SHM="1", DS_ACCELERATOR="cpu",
               TORCH_EXTENSIONS_DIR=str(work / "torch_extensions"), PYTHONPATH=str(REPO_ROOT))
    cmd = [sys.executable, "-m", "pretrain", f"data.path={work / 'indexed'}", f"run_dir={run_dir}",
           *SMALL_MODEL, *RUN, f"train.train_iters={iters}", f"train.lr_decay_iters={iters}"]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400)


def test_truncated_deepspeed_checkpoint_is_rejected_and_run_resumes_from_previous(tmp_path):
    make_indexed_dataset(tmp_path)
    run_dir = tmp_path / "run"
    out = launch(tmp_path, run_dir, 4)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    root = run_dir / "checkpoints_ds"
    newest = root / "iter_0000004"
    victim = max((p for p in newest.rglob("*.pt")), key=lambda p: p.stat().st_size)
    name = victim.relative_to(newest).as_posix()
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size // 2)

    out = launch(tmp_path, run_dir, 6)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rejected = [r for r in rows if r.get("event") == "checkpoint_rejected"]
    assert len(rejected) == 1 and rejected[0]["file"] == name, rejected
    assert rejected[0]["fallback"] == "iter_0000002" and rejected[0]["step"] == 2
    assert (run_dir / "checkpoints_rejected" / "iter_0000004" / name).is_file()
    assert (root / "latest").read_text().strip() == "iter_0000006"
    assert [r["step"] for r in rows if r.get("event") is None and "loss" in r] == list(range(1, 7))
    record = json.loads((root / "iter_0000006" / "integrity.json").read_text())
    assert "run_config.yaml" in record["files"] and len(record["files"]) >= 3, record
