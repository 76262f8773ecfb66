"""Group LRs come from the config, not from the checkpoint (issue 21: μP LRs follow the width).

megatron's optimizer.load_state_dict restores each param group's max_lr/min_lr from the
checkpoint; under μP the matrix-like groups' LRs are lr_matrix / fan-in multiplier, so a
checkpoint loaded under another width or another lr_matrix must run at the new config's
LRs. Real single-process ``python -m pretrain`` runs; the start/resume row of
metrics.jsonl carries ``lr_groups`` as read off the optimizer after the load.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers.synthetic_data import make_indexed_dataset
from tests.pretrain.train.test_run_logs import train

pytestmark = pytest.mark.timeout(600)

MUP = ["model.mup.enabled=true", "model.mup.base_hidden_size=32", "model.mup.base_ffn_hidden_size=64",
       "model.mup.base_num_attention_heads=2", "train.lr_warmup_iters=1", "train.heldout_max_documents=1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_indexed_dataset(tmp_path_factory.mktemp("data"))


def lr_row(run_dir: Path, event: str) -> list:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("event") == event][-1]["lr_groups"]


def test_resume_under_a_new_lr_matrix_runs_at_the_configs_group_lrs(data_dir, tmp_path):
    saved = tmp_path / "saved"
    train(data_dir, saved, *MUP, "train.lr_matrix=4e-3", "train.train_iters=2", "checkpoint.save_interval=2")
    before = lr_row(saved, "start")
    assert len(before) > 1, before   # μP: vector-like and matrix-like groups

    resumed = tmp_path / "resumed"
    shutil.copytree(saved, resumed)
    train(data_dir, resumed, *MUP, "train.lr_matrix=1e-3", "train.train_iters=3")
    fresh = tmp_path / "fresh"
    train(data_dir, fresh, *MUP, "train.lr_matrix=1e-3", "train.train_iters=2")
    assert lr_row(resumed, "resume") == lr_row(fresh, "start")
    assert lr_row(resumed, "resume") != before   # the checkpoint's own LRs were not kept
