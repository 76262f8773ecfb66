"""MSG growth on the megatron-core model: the loss right after growth equals the loss before.

One torchrun launch (2 processes) per layer spec runs every scenario of ``growth_worker.py``
(operators alone and combined, TP2 / PP2 / DP2 layouts, resharding across the
growth); these tests check its figures.  Specs: the local one (every machine) and the
TransformerEngine one (skipped, saying why, where TE does not import; the worker is gloo/CPU,
so a CUDA host skips it too: tests/helpers/launch.py).
"""

from __future__ import annotations

import json

import pytest

from tests.pretrain.growth import SPECS, growth_worker, launch_growth_scenarios, skip_unless_spec_builds

REL_TOL = 1e-5


@pytest.fixture(scope="module", params=SPECS)
def results(request, tmp_path_factory) -> dict:
    """Every scenario on each layer spec this machine builds; the local spec's launch is the
    session's shared one (its checkpoints also feed the streaming test)."""
    skip_unless_spec_builds(request.param)
    if request.param == "local":
        out = request.getfixturevalue("growth_run")
    else:
        out = launch_growth_scenarios(tmp_path_factory.mktemp(f"growth_{request.param}"), request.param)
    return json.loads((out / "results.json").read_text())


def test_every_scenario_ran(results):
    assert sorted(results) == sorted(growth_worker.SCENARIOS)


@pytest.mark.parametrize("name", list(growth_worker.SCENARIOS))
def test_loss_unchanged_by_growth(results, name):
    r = results[name]
    assert r["ramp_at_growth"] == 0.0
    assert abs(r["loss_after"] - r["loss_before"]) / r["loss_before"] < REL_TOL, r


@pytest.mark.parametrize("name", list(growth_worker.SCENARIOS))
def test_training_continues_without_a_jump(results, name):
    """Step, data position and Adam step continue; no post-growth loss jump."""
    r = results[name]
    assert r["start_iteration"] == growth_worker.STEPS_BEFORE
    assert r["adam_step_after_load"] == growth_worker.STEPS_BEFORE
    # the first post-growth step runs the old function (m = 0) on the next batch
    assert r["train_after"][0] < r["train_before"][-1]
    recent = sum(r["train_before"][-2:]) / 2
    assert max(r["train_after"]) < recent * 1.02, r
    assert r["ramp_at_end"] == 1.0
    assert r["final_masked"] < r["loss_before"] * 1.03, r


@pytest.mark.parametrize("name", [n for n, s in growth_worker.SCENARIOS.items() if s[-1]])
def test_resume_mid_ramp_and_plain_model_after_ramp(results, name):
    r = results[name]
    assert 0.0 < r["mid_ramp"]["ramp"] < 1.0
    assert abs(r["mid_ramp"]["resumed"] - r["mid_ramp"]["live"]) / r["mid_ramp"]["live"] < REL_TOL
    assert abs(r["final_plain"] - r["final_masked"]) / r["final_masked"] < REL_TOL
