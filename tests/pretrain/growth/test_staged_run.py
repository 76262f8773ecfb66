"""A staged MSG run end to end: ``python -m pretrain.growth schedule=tiny_cpu``, shortened.

Three stages through the one training loop (``python -m pretrain`` per stage) with a layout
change at each growth (TP1 -> TP2 -> PP2, at most 2 processes), on the synthetic indexed corpus.
One uninterrupted run, then the last stage rolled back to its mid-ramp checkpoint (m = 0.5) and
the same command re-run; every assertion reads those two runs' metrics.jsonl files.

Function preservation on real data: each grown stage's first step logs a ``growth`` row, the
held-out set scored by the grown model at m = 0 (pretrain/train/callbacks/growth_ramp.py); the
previous stage's final ``heldout`` row is the old model on the same documents.

Growth on the stage's own ranks: the runner grows nothing; each grown stage's first trainer
launch (2 processes, the stage's TP/PP) grows the previous checkpoint streaming
(pretrain/train/growth_start.py), and the ``growth`` row's ``grown_here`` says so: world size,
layout, per-rank bytes read and written.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from pretrain.checkpoint import write_latest_marker
from tests.helpers.launch import REPO_ROOT
from tests.helpers.synthetic_data import make_indexed_dataset
from tests.pretrain.test_cli import clean_env

STAGE_ITERS, RAMP = 4, 4          # every stage 4 steps; the last stage's ramp is 4 (m = 0.5 at its 2nd checkpoint)
ROLLBACK_TO = 2 * STAGE_ITERS + 2  # stage 2 starts at 8: iteration 10 is mid-ramp
SHORT = [f"schedule.stages.{k}.iters={STAGE_ITERS}" for k in range(3)] + [
    "schedule.stages.0.warmup_iters=2",
    "schedule.stages.1.rewarm_iters=2", "schedule.stages.1.mask_ramp_iters=2",
    "schedule.stages.2.rewarm_iters=2", f"schedule.stages.2.mask_ramp_iters={RAMP}",
    "model.seq_length=64", "checkpoint.save_interval=2", "train.heldout_max_documents=2", "logging.progress=false"]
REL_TOL_GROWTH, ABS_TOL_RESUME = 1e-5, 1e-6


def rows(stage_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]


def step_losses(stage_dir: Path) -> dict[int, float]:
    """Training loss per step."""
    return {r["step"]: r["loss"] for r in rows(stage_dir) if r.get("event") is None}


def heldout_losses(row: dict) -> dict[str, float]:
    return {f"{kind}/{name}": v["loss"] for kind in ("by_lang", "by_source") for name, v in row[kind].items()}


def run_schedule(data: Path, run_dir: Path) -> str:
    cmd = [sys.executable, "-m", "pretrain.growth", "schedule=tiny_cpu", f"run_dir={run_dir}",
           f"data.path={data}", *SHORT]
    out = subprocess.run(cmd, cwd=REPO_ROOT, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out.stdout


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("staged")
    data, run_dir = make_indexed_dataset(root / "data"), root / "run"
    leftovers = plant_interrupted_growth(run_dir / "stage1_wider" / "checkpoints", STAGE_ITERS)
    straight_out = run_schedule(data, run_dir)
    stages = sorted(run_dir.glob("stage*_*"))
    last = stages[-1]
    straight = step_losses(last)
    # roll the last stage back to its mid-ramp checkpoint and re-run the same command
    for path in (last / "checkpoints").glob("iter_*"):
        if int(path.name.split("_")[-1]) > ROLLBACK_TO:
            shutil.rmtree(path)
    write_latest_marker(str(last), ROLLBACK_TO)
    resumed_out = run_schedule(data, run_dir)
    return {"stages": stages, "straight": straight, "resumed": step_losses(last), "resumed_out": resumed_out,
            "straight_out": straight_out, "leftovers": leftovers}


def plant_interrupted_growth(checkpoints: Path, iteration: int) -> list[Path]:
    """What a growth killed midway leaves (no ``latest`` marker): a staging directory with a
    partial save, its part checkpoints, and a renamed target whose marker was never written.
    The stage's first launch must clear them and grow again."""
    name = f"iter_{iteration:07d}"
    staging, parts, target = (checkpoints / f".{name}.growing", checkpoints / f"..{name}.growing.growth_parts",
                              checkpoints / name)
    for directory in (staging, parts / "000000", target):
        directory.mkdir(parents=True)
    (staging / "__0_0.distcp").write_bytes(b"partial")
    (parts / "000000" / "__1_0.distcp").write_bytes(b"partial")
    (target / "run_config.yaml").write_text("growth: null\n")
    return [staging, parts]


def tensor_bytes(checkpoint: Path) -> int:
    """Bytes of every tensor of a dist checkpoint at its global shape (from its metadata)."""
    from megatron.core.dist_checkpointing import load_tensors_metadata

    return sum(math.prod(item.global_shape) * torch.empty((), dtype=item.dtype).element_size()
               for item in load_tensors_metadata(str(checkpoint)).values())


@pytest.mark.slow  # two runner invocations, 4 trainer launches: 126 s measured on a loaded 2-core box
@pytest.mark.multiproc
@pytest.mark.timeout(900)
def test_staged_run_grows_continuously_across_layouts_and_resumes_mid_ramp(staged):
    stages = staged["stages"]
    assert [s.name for s in stages] == ["stage0_small", "stage1_wider", "stage2_deeper"]
    configs = [OmegaConf.load(s / "stage.yaml") for s in stages]
    layouts = [(c.parallel.tensor_model_parallel_size, c.parallel.pipeline_model_parallel_size) for c in configs]
    assert layouts == [(1, 1), (2, 1), (1, 2)]
    assert [c.model.num_layers for c in configs] == [2, 2, 4]
    assert [c.model.hidden_size for c in configs] == [64, 128, 128]

    for k, (old, new) in enumerate(zip(stages, stages[1:]), start=1):
        end = k * STAGE_ITERS
        # the step count continues; the grown stage resumes the grown checkpoint at the old end
        assert sorted(step_losses(new)) == list(range(end + 1, end + STAGE_ITERS + 1))
        before = next(r for r in rows(old) if r.get("event") == "heldout" and r["step"] == end)
        growth = [r for r in rows(new) if r.get("event") == "growth"]
        assert len(growth) == 1 and growth[0]["step"] == end and growth[0]["ramp"] == 0.0
        old_loss, new_loss = heldout_losses(before), heldout_losses(growth[0])
        assert old_loss.keys() == new_loss.keys()
        for name, loss in old_loss.items():
            assert abs(new_loss[name] - loss) / loss < REL_TOL_GROWTH, (new, name, loss, new_loss[name])
        # grown by the stage's own 2 ranks, streaming: each read only part of the old checkpoint,
        # together they wrote the grown checkpoint once
        grown = growth[0]["grown_here"]
        assert (grown["world_size"], grown["streaming"]) == (2, True), grown
        assert (grown["tp"], grown["pp"]) == layouts[k], grown
        assert grown["target"] == str(new / "checkpoints" / f"iter_{end:07d}")
        old_bytes = tensor_bytes(old / "checkpoints" / f"iter_{end:07d}")
        assert all(0 < read < old_bytes for read in grown["read_bytes"]), (grown["read_bytes"], old_bytes)
        assert all(written > 0 for written in grown["written_bytes"]), grown
        assert sum(grown["written_bytes"]) == tensor_bytes(Path(grown["target"])), grown
    assert staged["straight_out"].count("streaming=True)") == 2, staged["straight_out"][-3000:]
    assert "[growth] grew" not in staged["resumed_out"]   # a resumed stage does not grow again
    # the interrupted growth's leftovers were cleared, and the grown target replaced the stale one
    assert not any(path.exists() for path in staged["leftovers"])

    # resumed mid-ramp: the last stage's later steps are the uninterrupted run's
    assert "stage 0 (small) already done" in staged["resumed_out"]
    assert "stage 1 (wider) already done" in staged["resumed_out"]
    resume_rows = [r for r in rows(stages[-1]) if r.get("event") == "resume"]
    assert resume_rows[-1]["step"] == ROLLBACK_TO
    # the resumed run drops the rolled-back rows (after step 10) and writes its own after its resume row
    last_rows = rows(stages[-1])
    resumed_at = max(i for i, r in enumerate(last_rows) if r.get("event") == "resume")
    assert [r["step"] for r in last_rows[resumed_at:] if r.get("event") is None] == \
        list(range(ROLLBACK_TO + 1, 3 * STAGE_ITERS + 1))
    straight, resumed = staged["straight"], staged["resumed"]
    assert sorted(straight) == sorted(resumed)
    for step in range(ROLLBACK_TO + 1, 3 * STAGE_ITERS + 1):
        assert abs(resumed[step] - straight[step]) <= ABS_TOL_RESUME, (step, straight[step], resumed[step])
