"""Held-out loss/BPB by position bucket (issue 20 item 4): a real ``python -m pretrain`` run logs
the buckets in its held-out rows, they add up to the held-out loss, and the plot is written."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch

from pretrain.eval.positions import bucket_sums, position_edges
from tests.helpers.launch import REPO_ROOT
from tests.helpers.synthetic_data import make_indexed_dataset
from tests.pretrain.test_cli import clean_env, pretrain_cmd

pytestmark = pytest.mark.timeout(600)


def test_default_edges_double_from_a_64th_of_the_sequence():
    assert position_edges(32768) == [0, 512, 1024, 2048, 4096, 8192, 16384, 32768]
    assert position_edges(64) == [0, 1, 2, 4, 8, 16, 32, 64]
    assert position_edges(4096, [1024, 2048]) == [0, 1024, 2048, 4096]
    with pytest.raises(ValueError, match="heldout_position_buckets"):
        position_edges(4096, [2048, 1024])
    with pytest.raises(ValueError, match="heldout_position_buckets"):
        position_edges(4096, [4096])


def test_bucket_sums_put_each_masked_token_in_its_position_bucket():
    losses = torch.arange(12.0).reshape(2, 6)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0]])
    sums = bucket_sums(losses, mask, [0, 2, 4, 6])
    # positions 0-1: 0+1+6+7; 2-3: 2+3; 4-5: 4 (position 5 and row 2's tail are masked)
    assert sums.tolist() == [[14.0, 4.0], [5.0, 2.0], [4.0, 1.0]]


def test_a_run_logs_position_buckets_that_add_up_to_the_heldout_loss(tmp_path):
    data_dir = make_indexed_dataset(tmp_path / "data")
    run_dir = tmp_path / "run"
    out = subprocess.run(pretrain_cmd(data_dir, run_dir, "train.train_iters=3", "train.eval_interval=0",
                                      "checkpoint.save_interval=0", "train.heldout_max_documents=null",
                                      "train.micro_batch_size=8"),
                         cwd=REPO_ROOT, env=clean_env(), capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    heldout = [r for r in rows if r.get("event") == "heldout"]
    assert heldout, "no held-out row"
    checked = 0
    for kind in ("by_lang", "by_source"):
        for name, row in heldout[-1][kind].items():
            buckets = row["positions"]
            assert [(b["start"], b["end"]) for b in buckets] == list(zip([0, 1, 2, 4, 8, 16, 32],
                                                                        [1, 2, 4, 8, 16, 32, 64]))
            assert sum(b["tokens"] for b in buckets) == row["tokens"], name
            assert all(b["tokens"] > 0 for b in buckets), name  # 40-160-token documents reach every bucket
            mean_loss = sum(b["loss"] * b["tokens"] for b in buckets) / row["tokens"]
            mean_bpb = sum(b["bpb"] * b["tokens"] for b in buckets) / row["tokens"]
            assert math.isclose(mean_loss, row["loss"], rel_tol=1e-6), (name, mean_loss, row["loss"])
            assert math.isclose(mean_bpb, row["bpb"], rel_tol=1e-6), (name, mean_bpb, row["bpb"])
            # the first prediction of a window has one token of context: the worst bucket
            assert buckets[0]["loss"] > buckets[-1]["loss"], (name, buckets)
            checked += 1
    assert checked == 3  # en, code, web
    plot = run_dir / "heldout_positions.png"
    assert plot.exists() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_buckets_are_refused_before_launch(tmp_path):
    data_dir = make_indexed_dataset(tmp_path / "data")
    out = subprocess.run(pretrain_cmd(data_dir, tmp_path / "run", "train.heldout_position_buckets=[32,16]"),
                         cwd=REPO_ROOT, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "train.heldout_position_buckets=[32, 16]" in out.stderr and "launching" not in out.stdout
