"""One GPU, BF16: the TransformerEngine spec and the local spec train the same network.

Skipped (saying why) on machines without CUDA and TransformerEngine: CI and the CPU
development machines. ``bench/gpu/run.sh`` runs it first on a fresh GPU machine.
Each run is a real ``python -m pretrain`` process (world 1, NCCL).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from pretrain.model.fast_path import detect_machine
from tests.helpers.launch import REPO_ROOT
from tests.helpers.synthetic_data import make_indexed_dataset
from tests.pretrain.test_cli import clean_env, pretrain_cmd

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(torch.cuda.is_available() and not detect_machine().transformer_engine,
                       reason="needs TransformerEngine (make env installs it on CUDA machines)"),
    pytest.mark.timeout(900),
]

STEPS = 20
# BF16 GEMMs through different kernels (TE's fused LayerNorm-linear vs torch RMSNorm + linear,
# TE attention vs SDPA): per-step losses differ by rounding, not by model.
BF16_LOSS_TOLERANCE = 0.05
RUN = ["train.bf16=true", f"train.train_iters={STEPS}", "train.eval_interval=0",
       "checkpoint.save_interval=10", "checkpoint.async_save=false"]


def train(data_dir: Path, run_dir: Path, *overrides: str) -> dict[int, float]:
    out = subprocess.run(pretrain_cmd(data_dir, run_dir, *RUN, *overrides), cwd=REPO_ROOT, env=clean_env(),
                         capture_output=True, text=True, timeout=800)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r.get("event") is None}


def start_row(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return next(r for r in rows if r.get("event") in ("start", "resume"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_indexed_dataset(tmp_path_factory.mktemp("data"))


def test_te_and_local_spec_losses_agree_and_checkpoints_cross_load(data_dir, tmp_path):
    te = train(data_dir, tmp_path / "te", "train.gpu.spec=transformer_engine")
    local = train(data_dir, tmp_path / "local", "train.gpu.spec=local")
    assert sorted(te) == list(range(1, STEPS + 1))
    assert [te[s] for s in sorted(te)] == pytest.approx([local[s] for s in sorted(local)], abs=BF16_LOSS_TOLERANCE)
    used = start_row(tmp_path / "te")["fast_path"]
    assert used["spec"] == "transformer_engine" and used["fusions"]["gradient_accumulation_fusion"], used
    assert "transformer_engine" in used["attention"], used

    # a checkpoint saved by one spec continues under the other (resume from step 10)
    cont = train(data_dir, tmp_path / "local_from_te", "train.gpu.spec=local",
                 f"checkpoint.load={tmp_path / 'te' / 'checkpoints' / 'iter_0000010'}")
    assert sorted(cont) == list(range(11, STEPS + 1))
    assert [cont[s] for s in sorted(cont)] == pytest.approx([te[s] for s in range(11, STEPS + 1)],
                                                           abs=BF16_LOSS_TOLERANCE)
