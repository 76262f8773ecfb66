"""``python -m pretrain backend=deepspeed``: real DeepSpeed, real gloo, 2 processes.

One megatron-backend reference run (DP2, 10 steps) and three DeepSpeed runs
against it: ZeRO-1 DP2, ZeRO-2 TP2 (megatron TP model through the mpu adapter,
DP1) with the optimizer offloaded to CPU, and ZeRO-3 DP2 trained 5 steps then
resumed to 10.  Measured on CPU/fp32: every step's loss equals megatron DP2's
within 1.2e-7 (ZeRO-1: 0; ZeRO-2 TP2 + offload, ZeRO-3 5+5 resume: 1.2e-7).
A copy of the ZeRO-1 run, its newest checkpoint truncated, checks that DeepSpeed
checkpoints carry integrity.json too (rejected on resume, the previous one loaded).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.launch import REPO_ROOT
from tests.helpers.synthetic_data import make_indexed_dataset
from tests.pretrain.train.trainer_worker import SMALL_MODEL

pytestmark = pytest.mark.multiproc

RUN = ["train.micro_batch_size=2", "train.global_batch_size=8", "train.train_iters=10",
       "train.lr_warmup_iters=3", "train.lr_decay_iters=10", "data.train_samples=80",
       "train.eval_interval=0", "train.log_interval=0", "checkpoint.save_interval=5",
       "checkpoint.async_save=false", "logging.wandb.mode=disabled", "logging.progress=false"]
METRIC_KEYS = {"step", "loss", "grad_norm", "lr", "tokens_per_s", "consumed_samples", "tokens",
               "tflops_per_gpu", "mfu", "mem_gb", "step_time_s", "skipped", "elapsed_s"}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ds")
    make_indexed_dataset(root)
    return root


def launch(work: Path, run_dir: Path, *overrides: str) -> str:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "WANDB_MODE")}
    env.update(OMP_NUM_THREADS="1", PRETRAIN_DS_NO_SHM="1", DS_ACCELERATOR="cpu",
               TORCH_EXTENSIONS_DIR=str(work / "torch_extensions"), PYTHONPATH=str(REPO_ROOT))
    cmd = [sys.executable, "-m", "pretrain", f"data.path={work / 'indexed'}", f"run_dir={run_dir}",
           *SMALL_MODEL, *RUN, *overrides]
    out = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    return out.stdout


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return {r["step"]: r["loss"] for r in rows if r.get("event") is None}


@pytest.fixture(scope="module")
def megatron_losses(work) -> dict[int, float]:
    run_dir = work / "megatron"
    launch(work, run_dir, "parallel=dp2")
    return losses(run_dir)


@pytest.fixture(scope="module")
def zero1_run(work) -> tuple[Path, str]:
    """ZeRO-1 DP2, 10 steps, checkpoints at 5 and 10: (run dir, stdout). Tests that change it work on a copy."""
    run_dir = work / "zero1"
    return run_dir, launch(work, run_dir, "parallel=dp2", "backend=deepspeed", "deepspeed.zero_stage=1")


def test_zero1_dp2_matches_the_megatron_backend(zero1_run, megatron_losses):
    run_dir, stdout = zero1_run
    assert "launching 2 local processes" in stdout
    got = losses(run_dir)
    assert sorted(got) == list(range(1, 11))
    assert abs(got[1] - megatron_losses[1]) < 1e-5
    assert max(abs(got[s] - megatron_losses[s]) for s in got) < 1e-5  # measured <= 2.4e-7
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    step_rows = [r for r in rows if r.get("event") is None]
    assert METRIC_KEYS <= set(step_rows[-1])
    assert step_rows[-1]["consumed_samples"] == 80
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 10 and summary["backend"] == "deepspeed"
    assert (run_dir / "loss.png").is_file()
    ckpts = run_dir / "checkpoints_ds"
    assert (ckpts / "latest").read_text().strip() == "iter_0000010"
    assert sorted(p.name for p in ckpts.glob("iter_*")) == ["iter_0000005", "iter_0000010"]


def test_truncated_deepspeed_checkpoint_is_rejected_and_run_resumes_from_previous(work, zero1_run, tmp_path):
    """DeepSpeed checkpoints (``checkpoints_ds/``) carry integrity.json too: 2 real processes (ZeRO-1,
    DP2), so the hashing and the verification are split over ranks and gathered. A truncated file in
    the newest checkpoint is rejected on resume and the run continues from the previous one."""
    run_dir = tmp_path / "run"
    shutil.copytree(zero1_run[0], run_dir)
    root = run_dir / "checkpoints_ds"
    newest = root / "iter_0000010"
    victim = max((p for p in newest.rglob("*.pt")), key=lambda p: p.stat().st_size)
    name = victim.relative_to(newest).as_posix()
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size // 2)

    launch(work, run_dir, "parallel=dp2", "backend=deepspeed", "deepspeed.zero_stage=1")  # asserts exit 0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rejected = [r for r in rows if r.get("event") == "checkpoint_rejected"]
    assert len(rejected) == 1 and rejected[0]["file"] == name, rejected
    assert rejected[0]["fallback"] == "iter_0000005" and rejected[0]["step"] == 5
    assert (run_dir / "checkpoints_rejected" / "iter_0000010" / name).is_file()
    assert (root / "latest").read_text().strip() == "iter_0000010"
    assert [r["step"] for r in rows if r.get("event") is None and "loss" in r] == list(range(1, 11))
    record = json.loads((root / "iter_0000010" / "integrity.json").read_text())
    assert "run_config.yaml" in record["files"] and len(record["files"]) >= 3, record


def test_zero2_tp2_through_the_mpu_adapter_with_cpu_offload(work, megatron_losses):
    run_dir = work / "zero2_tp2"
    launch(work, run_dir, "parallel=tp2", "backend=deepspeed", "deepspeed.zero_stage=2",
           "deepspeed.offload_optimizer=cpu", "train.train_iters=6")
    got = losses(run_dir)
    assert sorted(got) == list(range(1, 7))
    # Same initial weights sharded over TP, same data and schedule: tracks megatron DP2.
    assert abs(got[1] - megatron_losses[1]) < 1e-5
    assert max(abs(got[s] - megatron_losses[s]) for s in got) < 1e-5  # measured 1.2e-7
    assert got[6] < got[1]


def test_zero3_dp2_resume_equals_straight_run(work, megatron_losses):
    run_dir = work / "zero3"
    common = ["parallel=dp2", "backend=deepspeed", "deepspeed.zero_stage=3"]
    launch(work, run_dir, *common, "train.train_iters=5")
    assert (run_dir / "checkpoints_ds" / "latest").read_text().strip() == "iter_0000005"
    stdout = launch(work, run_dir, *common)
    assert "resumed from" in stdout and "at step 5 (40 samples consumed)" in stdout
    got = losses(run_dir)
    assert sorted(got) == list(range(1, 11))
    assert max(abs(got[s] - megatron_losses[s]) for s in got) < 1e-5  # 5+5 vs megatron's 10 straight
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("event") == "resume"] == [5]


def test_validate_rejects_pipeline_parallel_for_deepspeed(work, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    cmd = [sys.executable, "-m", "pretrain", f"data.path={work / 'indexed'}", f"run_dir={tmp_path / 'r'}",
           *SMALL_MODEL, *RUN, "parallel=pp2", "backend=deepspeed", "deepspeed.zero_stage=4",
           "deepspeed.offload_optimizer=nvme", "train.spikes.act_on=[nonfinite,grad_norm_spike]"]
    out = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "parallel.pipeline_model_parallel_size=2" in out.stderr
    assert "deepspeed.zero_stage=4" in out.stderr and "deepspeed.offload_optimizer='nvme'" in out.stderr
    assert "train.spikes.act_on: grad_norm_spike" in out.stderr   # the one loop feature DeepSpeed cannot run


def test_z_loss_under_deepspeed(work, megatron_losses):
    """The ZLoss callback on the engine's model: the reported loss stays the cross entropy
    (step 1 equals megatron's), the trained loss includes the term (later steps move)."""
    run_dir = work / "zero1_zloss"
    launch(work, run_dir, "parallel=dp2", "backend=deepspeed", "deepspeed.zero_stage=1", "train.z_loss=1e-2")
    got = losses(run_dir)
    assert sorted(got) == list(range(1, 11))
    assert abs(got[1] - megatron_losses[1]) < 1e-5
    assert abs(got[10] - megatron_losses[10]) > 1e-5          # the term changed the updates
    assert abs(got[10] - megatron_losses[10]) < 0.05


# ----------------------------------------------------------------------------
# The shared loop's features under DeepSpeed (issue 15): spike recovery, held-out BPB,
# save-and-requeue on SIGUSR1 -- the same callbacks the megatron backend runs.
# ----------------------------------------------------------------------------

SPIKES = ["train.spikes.window=8", "train.spikes.min_history=5", "train.spikes.loss_sigma=3",
          "train.spikes.rollback_steps_before=3", "train.spikes.skip_batches=2", "train.spikes.lr_steps=4",
          "train.spikes.max_recoveries=4", "train.spikes.recovery_window=100"]
DS_ZERO1 = ["parallel=dp2", "backend=deepspeed", "deepspeed.zero_stage=1"]


def rows(run_dir: Path, name: str = "metrics.jsonl") -> list[dict]:
    path = run_dir / name
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.is_file() else []


def test_lr_spike_is_rolled_back_under_deepspeed(work):
    run_dir = work / "ds_lr_spike"
    launch(work, run_dir, *DS_ZERO1, *SPIKES, "train.train_iters=30", "train.lr_decay_iters=30",
           "data.train_samples=240", "train.lr=3e-3", "train.min_lr=3e-4", "checkpoint.save_interval=4",
           "checkpoint.keep_last=10", "train.fault.kind=lr_spike", "train.fault.step=15")
    events = rows(run_dir, "spikes.jsonl")
    assert [e["step"] for e in events if e["event"] == "fault"] == [15]
    (rollback,) = [e for e in events if e["event"] == "spike_rollback"]
    assert rollback["checkpoint_iteration"] <= rollback["step"] - 3           # rollback_steps_before=3
    start, end = rollback["skipped_samples"]
    assert start == rollback["checkpoint_iteration"] * 8                      # the checkpoint's data position
    assert end == rollback["samples"][1] + 2 * 8                              # skip_batches=2
    got = losses(run_dir)
    assert sorted(got) == list(range(1, 31))
    assert all(math.isfinite(v) for v in got.values()) and got[30] < got[1]


def _worker_env(work: Path, rank: int, port: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE",)}
    env.update(OMP_NUM_THREADS="1", PRETRAIN_DS_NO_SHM="1", DS_ACCELERATOR="cpu",
               TORCH_EXTENSIONS_DIR=str(work / "torch_extensions"), PYTHONPATH=str(REPO_ROOT),
               RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    return env


def test_nan_skip_heldout_bpb_and_sigusr1_requeue_under_deepspeed(work):
    """Two ranks started as Slurm's per-task layout would (no torchrun, so each exit code is
    visible): a NaN at step 3 is skipped, held-out BPB per language is logged every 4 steps,
    and SIGUSR1 to one rank makes both save and leave with the requeue code; a restart resumes."""
    import signal
    import time

    from pretrain.preemption import PREEMPTED_EXIT_CODE
    from tests.helpers.launch import free_port

    run_dir = work / "ds_preempt"
    common = [f"data.path={work / 'indexed'}", f"run_dir={run_dir}", *SMALL_MODEL, *RUN, *DS_ZERO1,
              "data.train_samples=1600", "train.lr_decay_iters=200", "checkpoint.save_interval=1000",
              "train.fault.kind=nan", "train.fault.step=3", "train.bpb_interval=4"]
    port = free_port()
    workers = [subprocess.Popen([sys.executable, "-m", "pretrain", *common, "train.train_iters=200"],
                                cwd=REPO_ROOT, env=_worker_env(work, rank, port), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    try:
        deadline = time.time() + 300
        while not [r for r in rows(run_dir) if r.get("event") is None and r["step"] >= 6]:
            assert time.time() < deadline and all(w.poll() is None for w in workers), \
                workers[0].communicate(timeout=30)[0][-4000:]
            time.sleep(0.2)
        os.kill(workers[1].pid, signal.SIGUSR1)         # one rank hears it; the ranks agree
        codes = [w.wait(timeout=300) for w in workers]
    finally:
        for w in workers:
            w.kill() if w.poll() is None else None
    assert codes == [PREEMPTED_EXIT_CODE] * 2, workers[0].stdout.read()[-4000:]
    saved = int((run_dir / "checkpoints_ds" / "latest").read_text().strip().split("_")[-1])
    metric_rows = rows(run_dir)
    assert 6 <= saved < 200
    assert [r["step"] for r in metric_rows if r.get("event") == "checkpoint"] == [saved]
    assert max(r["step"] for r in metric_rows if r.get("event") is None) == saved   # nothing trained unsaved

    spikes = rows(run_dir, "spikes.jsonl")
    assert [(e["event"], e["step"]) for e in spikes] == [("fault", 3), ("spike_skip_update", 3)]
    assert spikes[1]["signal"] == "nonfinite"
    got = losses(run_dir)
    assert sorted(got) == list(range(1, saved + 1)) and all(math.isfinite(v) for v in got.values())
    heldout = [r for r in metric_rows if r.get("event") == "heldout"]
    assert heldout and heldout[0]["step"] == 4
    assert all(row["bpb"] > 0 for row in heldout[0]["by_lang"].values())

    # The requeued job: the same command resumes from the saved step and finishes.
    stdout = launch(work, run_dir, *DS_ZERO1, "data.train_samples=1600", "train.lr_decay_iters=200",
                    "checkpoint.save_interval=1000", "train.fault.kind=nan", "train.fault.step=3",
                    f"train.train_iters={saved + 2}")
    # step 3's batch was skipped, so the data position is one global batch past the step count
    assert f"at step {saved} ({(saved + 1) * 8} samples consumed)" in stdout
    got = losses(run_dir)
    assert sorted(got) == list(range(1, saved + 3))
    assert [(e["event"], e["step"]) for e in rows(run_dir, "spikes.jsonl")] == [("fault", 3), ("spike_skip_update", 3)]
