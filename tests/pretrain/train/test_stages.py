"""Stages (train.stages) and the batch-size ramp-up (train.rampup_batch_size), issue 20.

Pure functions and validation here; end to end, real single-process ``python -m pretrain``
runs (gloo world 1): a run resumed in the middle of the ramp and before the stage whose
mixture and LR change gives the uninterrupted run's losses to the last bit, every step's
global batch is the ramp's, and the mixture changes with each source at its cursor.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bench.pretrain.same_losses import compare
from pretrain.config.schema import typed
from pretrain.config.validate import config_errors, stage_errors
from pretrain.train.stages import global_batch_at, rampup_batch, stage_lr, stages_from
from tests.helpers.launch import REPO_ROOT
from tests.helpers.synthetic_data import make_indexed_dataset
from tests.pretrain.test_cli import clean_env, pretrain_cmd

RAMP = [2, 2, 12]                 # start 2, +2 every 12/3 = 4 samples, 8 from 12 samples on
STAGES = [{"start_step": 1, "lr": {"style": "linear", "start": 0.0, "end": 3e-3}},
          {"start_step": 3, "lr": {"style": "constant", "start": 3e-3}},
          {"start_step": 6, "name": "anneal", "weights": {"web": 0.2, "code": 0.8},
           "lr": {"style": "1-sqrt", "start": 3e-3, "end": 3e-4}}]
RUN = ["train.train_iters=8", "train.eval_interval=0", "checkpoint.save_interval=3", "checkpoint.keep_last=5",
       f"train.rampup_batch_size=[{','.join(map(str, RAMP))}]",
       "train.stages=" + json.dumps(STAGES).replace('"', "").replace(" ", "")]


def cfg_with(**train) -> object:
    return typed({"train": {"micro_batch_size": 2, "global_batch_size": 8, "train_iters": 8, **train},
                  "model": {"name": "t", "num_layers": 1, "hidden_size": 8, "num_attention_heads": 1,
                            "ffn_hidden_size": 8, "vocab_size": 512, "seq_length": 64, "init_method_std": 0.02},
                  "parallel": {"name": "single"}}, strict=False)


def test_ramp_matches_megatron_core_calculator():
    from megatron.core.num_microbatches_calculator import RampupBatchsizeNumMicroBatchesCalculator

    for ramp, gbs, micro in (([2, 2, 12], 8, 2), ([16, 16, 1000], 128, 4), ([4, 4, 1], 8, 1)):
        calc = RampupBatchsizeNumMicroBatchesCalculator(gbs, micro, 1, False, 0, *ramp)
        for consumed in range(0, ramp[2] + 3 * gbs):
            calc.update(consumed, consistency_check=True)
            assert rampup_batch(ramp, gbs, consumed) == calc.get_current_global_batch_size(), (ramp, consumed)


def test_stage_lr_segments_and_batch_schedule():
    cfg = cfg_with(stages=STAGES, rampup_batch_size=RAMP)
    stages = stages_from(cfg)
    assert [s.last_step for s in stages] == [2, 5, 8]
    lrs = [stage_lr(stages, step) for step in range(1, 9)]
    assert lrs[:6] == [0.0, 3e-3, 3e-3, 3e-3, 3e-3, 3e-3] and lrs[7] == pytest.approx(3e-4)
    assert lrs[6] == pytest.approx(3e-4 + 2.7e-3 * (1 - 0.5 ** 0.5))
    consumed, batches = 0, []
    for step in range(1, 9):
        batches.append(global_batch_at(cfg, stages, step, consumed))
        consumed += batches[-1]
    assert batches == [2, 2, 4, 6, 8, 8, 8, 8]
    # a stage's own batch size wins over the ramp
    staged = cfg_with(stages=[{"start_step": 2, "global_batch_size": 4}], rampup_batch_size=RAMP)
    assert [global_batch_at(staged, stages_from(staged), s, 0) for s in (1, 2, 3)] == [2, 4, 4]


@pytest.mark.parametrize("train, key", [
    ({"stages": [{"start_step": 1, "weights": {"nope": 1.0}}]}, "train.stages[0].weights names unknown sources"),
    ({"stages": [{"start_step": 4}, {"start_step": 2}]}, "train.stages: start_step values [4, 2]"),
    ({"stages": [{"start_step": 2, "global_batch_size": 5}]}, "train.stages[0].global_batch_size=5"),
    ({"stages": [{"start_step": 2, "lr": {"style": "exp"}}]}, "train.stages[0].lr.style='exp'"),
    ({"rampup_batch_size": [3, 2, 10]}, "train.rampup_batch_size=[3, 2, 10]"),
    ({"rampup_batch_size": [2, 4, 10]}, "train.rampup_batch_size=[2, 4, 10]"),
    ({"rampup_lr_scaling": "cube"}, "train.rampup_lr_scaling='cube'"),
])
def test_validation_names_the_key(train, key):
    errors = stage_errors(cfg_with(**train), {"train": {"web": {}, "code": {}}})
    assert any(key in e for e in errors), errors
    assert not stage_errors(cfg_with(stages=STAGES, rampup_batch_size=RAMP), {"train": {"web": {}, "code": {}}})


def test_anneal_preset_composes_and_validates():
    from tests.pretrain.config.test_schema import compose_pretrain

    cfg = compose_pretrain("model=52b", "parallel=teleflm_52b", "cluster=a800", "+experiment=teleflm_52b_anneal")
    stages = stages_from(cfg)
    assert [s.name for s in stages] == ["warmup", "stable", "anneal"]
    assert stages[-1].lr.style == "1-sqrt" and stages[-1].lr.end == cfg.train.min_lr
    assert stage_lr(stages, 2000) == cfg.train.lr and stage_lr(stages, cfg.train.train_iters) == cfg.train.min_lr
    assert config_errors(cfg, None, None, check_data=False) == []
    assert stage_errors(cfg, {"train": {s: {} for s in stages[-1].weights}}) == []
    assert "train.stages[2].weights names unknown sources ['books'" in stage_errors(
        cfg, {"train": {s: {} for s in stages[-1].weights if s != "books"}})[0]


def test_long_context_preset_composes_and_validates():
    from tests.pretrain.config.test_schema import compose_pretrain

    cfg = compose_pretrain("model=52b", "parallel=teleflm_52b", "cluster=a800", "+experiment=teleflm_52b_long_context")
    assert cfg.model.seq_length == 32768 and cfg.model.rope_scaling.type == "yarn"
    assert config_errors(cfg, 896, None, check_data=False) == []
    stages = stages_from(cfg)
    assert stage_lr(stages, 363001) == stage_lr(stages, 365000) == cfg.train.min_lr


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.timeout(600)
def test_resume_mid_ramp_across_a_stage_boundary_is_bitwise_equal(tmp_path):
    data = make_indexed_dataset(tmp_path / "data")
    straight, split = tmp_path / "straight", tmp_path / "split"
    # the uninterrupted run and the first half of the split one share the 2 cores
    procs = [subprocess.Popen(pretrain_cmd(data, run, *RUN, *extra), cwd=REPO_ROOT, env=clean_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for run, extra in ((straight, []), (split, ["train.train_iters=3"]))]
    for proc in procs:
        out, _ = proc.communicate(timeout=500)
        assert proc.returncode == 0, out[-4000:]
    out = subprocess.run(pretrain_cmd(data, split, *RUN), cwd=REPO_ROOT, env=clean_env(),
                         capture_output=True, text=True, timeout=500)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "resumed from" in out.stdout and "at step 3 (8 samples consumed)" in out.stdout
    assert compare(straight, split) == [] or compare(straight, split) == ["held-out rows differ"]
    steps = [r for r in rows(straight) if r.get("event") is None]
    assert [r["global_batch_size"] for r in steps] == [2, 2, 4, 6, 8, 8, 8, 8]
    assert [r["consumed_samples"] for r in steps] == [2, 4, 8, 14, 22, 30, 38, 46]
    stages = stages_from(cfg_with(stages=STAGES))
    assert [r["lr"] for r in steps] == pytest.approx([stage_lr(stages, s) for s in range(1, 9)])
    changes = [r for r in rows(straight) if r.get("event") == "mixture"]
    assert len(changes) == 1 and changes[0]["step"] == 6 and changes[0]["consumed_samples"] == 22
    assert sum(changes[0]["cursors"].values()) == 22          # each source continues at its cursor
    resumed_change = next(r for r in rows(split) if r.get("event") == "mixture")
    assert {k: changes[0][k] for k in ("step", "consumed_samples", "weights", "cursors")} == \
        {k: resumed_change[k] for k in ("step", "consumed_samples", "weights", "cursors")}
    held = [r for r in rows(split) if r.get("event") == "heldout" and r["step"] == 8]
    assert held and held[0]["by_source"] == next(r for r in rows(straight) if r.get("event") == "heldout")["by_source"]
