"""The spike detector and the escalation ladder, as pure logic."""

from __future__ import annotations

import json
import math
import random

import pytest

from pretrain.train.spike_policy import Action, RecoveryPlanner, Signal, SpikeConfig, SpikeDetector, Verdict


def noisy_descent(steps: int, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [4.0 * math.exp(-i / 300) + 2.0 + rng.gauss(0, 0.03) for i in range(steps)]


def test_a_normal_run_raises_no_alarm():
    detector = SpikeDetector(SpikeConfig(window=64, min_history=16, sustained_window=100))
    verdicts = [detector.observe(loss, 1.0 + 0.05 * math.sin(i)) for i, loss in enumerate(noisy_descent(600))]
    assert all(not v.flagged for v in verdicts)


@pytest.mark.parametrize("loss,grad,signal", [
    (float("nan"), 1.0, Signal.NONFINITE),
    (3.0, float("inf"), Signal.NONFINITE),
    (9.0, 1.0, Signal.LOSS_SPIKE),
    (None, 40.0, Signal.GRAD_NORM_SPIKE),
])
def test_each_signal_is_detected(loss, grad, signal):
    detector = SpikeDetector(SpikeConfig(window=64, min_history=16))
    history = noisy_descent(100)
    for value in history:
        assert not detector.observe(value, 1.0 + random.Random(len(history)).random() * 0.01).flagged
    verdict = detector.observe(history[-1] if loss is None else loss, grad)
    assert verdict.signal is signal, verdict


def test_flagged_steps_do_not_pollute_the_window():
    detector = SpikeDetector(SpikeConfig(window=32, min_history=8))
    for value in [2.0 + 0.01 * (i % 3) for i in range(32)]:
        detector.observe(value, 1.0)
    assert detector.observe(20.0, 1.0).signal is Signal.LOSS_SPIKE
    # the same spike again is still a spike: the first one was kept out of the statistics
    assert detector.observe(20.0, 1.0).signal is Signal.LOSS_SPIKE
    assert max(detector.losses) < 2.1


def test_sustained_rise_is_caught_once():
    detector = SpikeDetector(SpikeConfig(window=16, min_history=8, loss_sigma=50, sustained_window=50,
                                         sustained_rise=0.05))
    signals = [detector.observe(2.0 + 0.004 * max(0, i - 60), 1.0).signal for i in range(200)]
    assert Signal.SUSTAINED_RISE in signals
    first = signals.index(Signal.SUSTAINED_RISE)
    assert first > 100  # not before the rise is real
    assert signals.count(Signal.SUSTAINED_RISE) <= 3


def test_escalation_ladder_and_stop():
    planner = RecoveryPlanner(SpikeConfig(max_recoveries=3, recovery_window=100))
    spike = Verdict(Signal.LOSS_SPIKE)
    assert planner.decide(10, Verdict(Signal.NONE)) is Action.CONTINUE
    assert planner.decide(10, spike) is Action.SKIP_UPDATE
    assert planner.decide(12, spike) is Action.ROLLBACK
    assert planner.decide(15, spike) is Action.LOWER_LR
    assert planner.decide(20, spike) is Action.STOP


def test_ladder_resets_after_a_quiet_window():
    planner = RecoveryPlanner(SpikeConfig(recovery_window=50))
    assert planner.decide(10, Verdict(Signal.LOSS_SPIKE)) is Action.SKIP_UPDATE
    assert planner.decide(200, Verdict(Signal.LOSS_SPIKE)) is Action.SKIP_UPDATE


def test_sustained_rise_starts_above_skip():
    planner = RecoveryPlanner(SpikeConfig())
    assert planner.decide(5, Verdict(Signal.SUSTAINED_RISE)) is Action.ROLLBACK


def test_state_round_trip_resumes_the_same_decisions():
    config = SpikeConfig(window=32, min_history=8)
    detector, planner = SpikeDetector(config), RecoveryPlanner(config)
    for value in noisy_descent(50):
        detector.observe(value, 1.0)
    planner.decide(49, Verdict(Signal.LOSS_SPIKE))
    detector2, planner2 = SpikeDetector(config), RecoveryPlanner(config)
    detector2.load_state_dict(detector.state_dict())
    planner2.load_state_dict(planner.state_dict())
    assert detector2.observe(9.0, 1.0).signal is detector.observe(9.0, 1.0).signal is Signal.LOSS_SPIKE
    assert planner2.decide(51, Verdict(Signal.LOSS_SPIKE)) is planner.decide(51, Verdict(Signal.LOSS_SPIKE))


def test_bad_config_names_the_key():
    with pytest.raises(ValueError, match="train.spikes.policies"):
        SpikeConfig(policies=("pray",))
    with pytest.raises(ValueError, match="lr_factor"):
        SpikeConfig(lr_factor=2.0)


def test_signals_outside_act_on_are_logged_not_acted_on(tmp_path):
    from omegaconf import OmegaConf

    from pretrain.train.spike_policy import spike_config_from
    from pretrain.train.callback import Decision
    from pretrain.train.callbacks.checkpointing import Checkpointing
    from pretrain.train.callbacks.metrics import Metrics
    from pretrain.train.callbacks.spike_log import SpikeLog
    from pretrain.train.callbacks.spike_recovery import SpikeRecovery

    cfg = OmegaConf.create({"run_dir": str(tmp_path), "model": {"seq_length": 16},
                            "train": {"spikes": {"window": 32, "min_history": 8},
                                      "fault": {"kind": "none", "step": 0}}})
    metrics = Metrics(cfg, None, None)  # never started: no monitor, events go to spikes.jsonl only
    recovery = SpikeRecovery(spike_config_from(cfg), cfg, SpikeLog(tmp_path, 0, metrics),
                             Checkpointing(0, metrics, resumed=False))
    assert "grad_norm_spike" not in recovery.config.act_on

    def judge(step: int, loss: float, grad_norm: float):  # one rank: flagged anywhere = flagged here
        verdict = recovery.detector.observe(loss, grad_norm)
        return recovery.act(step, loss, grad_norm, verdict, flagged_anywhere=verdict.flagged)

    for i in range(20):
        assert judge(i + 1, 3.0 - 0.01 * i, 1.0 + 0.01 * (i % 2)) is Decision.CONTINUE
    assert judge(21, 2.8, 50.0) is Decision.CONTINUE   # a grad-norm burst with a normal loss
    assert recovery.flagged is None
    logged = [json.loads(line) for line in (tmp_path / "spikes.jsonl").read_text().splitlines()]
    assert logged[-1]["event"] == "spike_observed" and logged[-1]["signal"] == "grad_norm_spike"
    assert judge(22, 30.0, 1.0) is Decision.SKIP         # a loss spike is acted on
    verdict, action = recovery.flagged
    assert verdict.signal is Signal.LOSS_SPIKE and action is Action.SKIP_UPDATE


def test_act_on_rejects_unknown_signals():
    with pytest.raises(ValueError, match="train.spikes.act_on"):
        SpikeConfig(act_on=("vibes",))
