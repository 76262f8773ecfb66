"""Spike recovery wired into the trainer: faults are detected and recovered without a human.

One torchrun launch (DP2, distributed optimizer, the small model, 30 steps) runs every
scenario in spike_worker.py; the single-process tests below cover the config mapping,
replay parsing and rollback-target choice.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.helpers.launch import torchrun
from tests.helpers.synthetic_data import make_indexed_dataset

# Measured (2-core CPU, DP2 fp32, 30 steps, clean final loss 5.478): nan +0.001,
# lr_spike -0.064 (its rollback skips 7 of the first 37 batches, so it ends on other data);
# batch-to-batch noise of the clean run near step 30 is ~0.03.
FINAL_LOSS_TOLERANCE = 0.1
STEPS = 30


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    data = make_indexed_dataset(tmp_path_factory.mktemp("data"))
    work = tmp_path_factory.mktemp("spikes")
    torchrun(2, ["tests/pretrain/train/spike_worker.py", str(data), str(work)], timeout=900)
    return json.loads((work / "results.json").read_text())


def _final(run: dict) -> float:
    return run["losses"][str(STEPS)]


def _events(run: dict, name: str) -> list[dict]:
    return [e for e in run["spikes"] if e["event"] == name]


@pytest.mark.multiproc
def test_clean_run_never_flags(runs):
    assert runs["clean"]["spikes"] == []
    assert sorted(map(int, runs["clean"]["losses"])) == list(range(1, STEPS + 1))


@pytest.mark.multiproc
def test_one_grad_norm_and_one_flag_all_reduce_per_step(runs):
    """Spike detection reads the grad norm before the update; the update must reuse it, and
    the spike verdict and the preemption flag share one all-reduce (no per-feature syncs)."""
    counted = runs["clean"]["counted"]
    assert counted["grad_norms"] == STEPS
    by_module = counted["all_reduce_by_module"]
    assert by_module.get("pretrain.train.flags") == STEPS
    assert "pretrain.preemption" not in by_module and "pretrain.train.spike_policy" not in by_module


@pytest.mark.multiproc
def test_nan_fault_is_skipped_and_run_finishes(runs):
    run = runs["nan"]
    (fault,) = _events(run, "fault")
    assert fault["step"] == 12 and fault["kind"] == "nan" and math.isnan(fault["loss"])
    (skip,) = _events(run, "spike_skip_update")
    assert skip["signal"] == "nonfinite" and skip["step"] == 12 and skip["skipped_samples"] == [88, 96]
    assert sorted(map(int, run["losses"])) == list(range(1, STEPS + 1))
    assert all(math.isfinite(v) for v in run["losses"].values())
    assert abs(_final(run) - _final(runs["clean"])) < FINAL_LOSS_TOLERANCE
    # the same event is an event row in metrics.jsonl
    assert any(e["event"] == "spike_skip_update" and e["step"] == 12 for e in run["events"])


@pytest.mark.multiproc
def test_corrupt_batch_is_flagged_as_loss_spike(runs):
    run = runs["corrupt_batch"]
    flagged = [e for e in run["spikes"] if e["event"].startswith("spike_")]
    assert flagged and flagged[0]["step"] == 24 and flagged[0]["signal"] == "loss_spike"
    assert flagged[0]["action"] == "skip_update"
    assert abs(_final(run) - _final(runs["clean"])) < FINAL_LOSS_TOLERANCE


@pytest.mark.multiproc
def test_lr_spike_escalates_to_rollback_with_data_skip(runs):
    run = runs["lr_spike"]
    (rollback,) = _events(run, "spike_rollback")
    step = rollback["step"]
    assert rollback["checkpoint_iteration"] <= step - 3          # rollback_steps_before=3
    start, end = rollback["skipped_samples"]
    assert start == rollback["checkpoint_iteration"] * 8          # the checkpoint's data position
    assert end == rollback["samples"][1] + 2 * 8                  # skip_batches=2 past the spike's batch
    assert sorted(map(int, run["losses"])) == list(range(1, STEPS + 1))
    assert abs(_final(run) - _final(runs["clean"])) < FINAL_LOSS_TOLERANCE


@pytest.mark.multiproc
def test_replay_from_log_reproduces_the_skips(runs):
    original, replay = runs["lr_spike"], runs["replay"]
    (rollback,) = _events(original, "spike_rollback")
    replayed = [e["skipped_samples"] for e in _events(replay, "replay_skip")]
    assert rollback["skipped_samples"] in replayed
    assert not [e for e in replay["spikes"] if e["event"].startswith("spike_")]
    resumed = rollback["checkpoint_iteration"]
    for s in range(resumed + 1, STEPS + 1):   # same weights, same data from the rollback point on
        assert replay["losses"][str(s)] == original["losses"][str(s)], s


@pytest.mark.multiproc
def test_max_recoveries_stops_with_a_message(runs):
    run = runs["stop"]
    assert run["stopped"] is not None
    assert "step 12" in run["stopped"] and "nonfinite" in run["stopped"] and "spikes.jsonl" in run["stopped"]
    (stop,) = _events(run, "spike_stop")
    assert stop["step"] == 12
    assert max(map(int, run["losses"])) == 11


@pytest.mark.multiproc
def test_z_loss_tp2_matches_tp1_and_trains(runs):
    assert runs["zloss_tp2"]["value_err"] < 1e-5 and runs["zloss_tp2"]["grad_err"] < 1e-5  # log Z in fp32
    z, clean = runs["zloss"]["losses"], runs["clean"]["losses"]
    assert z["1"] == clean["1"]                      # reported loss is the CE only
    assert z[str(STEPS)] != clean[str(STEPS)]        # the extra term changed the updates
    assert abs(z[str(STEPS)] - clean[str(STEPS)]) < FINAL_LOSS_TOLERANCE


def test_log_z_single_process_is_logsumexp():
    import torch

    from pretrain.train.callbacks.z_loss import log_z

    logits = torch.randn(4, 2, 10) * 5
    torch.testing.assert_close(log_z(logits), torch.logsumexp(logits, -1).transpose(0, 1))


# ----------------------------------------------------------------------------
# Single process
# ----------------------------------------------------------------------------

def test_config_keys_map_one_to_one_onto_spike_config():
    from dataclasses import fields

    from pretrain.train.spike_policy import SpikeConfig, spike_config_from
    from tests.pretrain.train.trainer_worker import compose

    cfg = compose([])
    keys = set(cfg.train.spikes) - {"replay_skips"}
    assert keys == {f.name for f in fields(SpikeConfig)}
    assert spike_config_from(cfg) == SpikeConfig(policies=("skip_update", "rollback", "lower_lr"))
    assert cfg.train.fault.kind == "none"


def test_replay_ranges_from_log_or_list(tmp_path):
    from pretrain.train.spike_policy import load_skip_ranges

    log = tmp_path / "spikes.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in [
        {"event": "fault", "step": 3}, {"event": "spike_rollback", "skipped_samples": [40, 80]},
        {"event": "spike_skip_update", "skipped_samples": [8, 16]}]) + "\n")
    assert load_skip_ranges(str(log)) == [[8, 16], [40, 80]]
    assert load_skip_ranges([[5, 9]]) == [[5, 9]]
    assert load_skip_ranges(None) == []


def test_replay_ranges_tolerate_a_torn_last_line_only(tmp_path):
    import pytest

    from pretrain.train.spike_policy import load_skip_ranges

    log = tmp_path / "spikes.jsonl"
    whole = json.dumps({"event": "spike_skip_update", "skipped_samples": [8, 16]})
    log.write_text(whole + '\n{"event": "spike_rollb')            # a crash mid-write
    assert load_skip_ranges(str(log)) == [[8, 16]]
    log.write_text('{"event": "spike_rollb\n' + whole + "\n")     # damage in the middle is an error
    with pytest.raises(ValueError, match=r"replay_skips: .*spikes.jsonl:1"):
        load_skip_ranges(str(log))


def test_rollback_target_choice(tmp_path):
    from pretrain.checkpoint import list_checkpoints
    from pretrain.train.callbacks.spike_recovery import rollback_target

    for i in (4, 8, 12, 16):
        (tmp_path / "checkpoints" / f"iter_{i:07d}").mkdir(parents=True)
    target, why = rollback_target(list_checkpoints(tmp_path), spike_step=16, before=3)
    assert target.name == "iter_0000012" and "newest" in why
    target, why = rollback_target(list_checkpoints(tmp_path), spike_step=6, before=3)
    assert target.name == "iter_0000004" and "oldest" in why
    assert rollback_target(list_checkpoints(tmp_path), spike_step=3, before=3)[0] is None
