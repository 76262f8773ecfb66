"""Sweep selection on synthetic runs: each criterion can decide, diverged runs lose,
and the winner's hyperparameters are transferred to the target by the μP rules."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

from pretrain.scaling.criteria import compute_criteria, isotonic_non_increasing
from pretrain.scaling.select import load_config, select


def write_run(root: Path, name: str, losses, grad_norms, lr=1e-3, lr_matrix=2e-3, init=0.02) -> None:
    run = root / name
    run.mkdir(parents=True)
    with (run / "metrics.jsonl").open("w") as f:
        for step, (loss, grad) in enumerate(zip(losses, grad_norms), start=1):
            f.write(json.dumps({"step": step, "loss": float(loss), "grad_norm": float(grad), "lr": lr}) + "\n")
        f.write(json.dumps({"step": len(losses), "eval_loss": 3.0}) + "\n")  # eval rows are skipped
    model = OmegaConf.load("configs/model/proxy.yaml")
    model.pop("defaults")
    model = OmegaConf.merge(OmegaConf.load("configs/model/52b.yaml"), model)
    model.init_method_std = init
    model.embedding_init_std = init / 2
    cfg = {"model": OmegaConf.to_container(model),
           "train": {"lr": lr, "lr_matrix": lr_matrix, "min_lr": lr / 10}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))


STEPS = np.arange(1, 101)
SMOOTH = 3.0 + 4.0 * STEPS ** -0.5


def test_isotonic_fit_is_monotone_and_exact_on_monotone_input():
    values = np.array([5.0, 4.0, 4.5, 3.0, 3.2, 2.0])
    fitted = isotonic_non_increasing(values)
    assert np.all(np.diff(fitted) <= 1e-12)
    assert np.allclose(isotonic_non_increasing(SMOOTH), SMOOTH)
    assert fitted[1] == fitted[2] == pytest.approx(4.25)


def test_criteria_separate_smooth_spiky_and_rising_grad_norm():
    flat = np.full(100, 1.0)
    smooth = compute_criteria([{"step": s, "loss": l, "grad_norm": g} for s, l, g in zip(STEPS, SMOOTH, flat)])
    spiky_loss = SMOOTH.copy()
    spiky_loss[40::15] += 1.0
    spiky = compute_criteria([{"step": s, "loss": l, "grad_norm": 1.0} for s, l in zip(STEPS, spiky_loss)])
    rising = compute_criteria([{"step": s, "loss": l, "grad_norm": g}
                               for s, l, g in zip(STEPS, SMOOTH, np.linspace(1, 4, 100))])
    assert smooth.trend_residual == pytest.approx(0.0, abs=1e-12) and spiky.trend_residual > 0.05
    assert smooth.grad_norm_instability == pytest.approx(0.0, abs=1e-12)
    assert rising.grad_norm_instability > 1.0
    nan = compute_criteria([{"step": 1, "loss": 3.0, "grad_norm": 1.0}, {"step": 2, "loss": math.nan}])
    assert nan.diverged and nan.final_loss == math.inf
    up = compute_criteria([{"step": s, "loss": 3 + 0.01 * s, "grad_norm": 1.0} for s in STEPS])
    assert up.diverged


def test_ranking_and_transfer(tmp_path):
    sweep = tmp_path / "sweep"
    ones = np.ones(100)
    write_run(sweep, "0_best", SMOOTH - 0.2, ones, lr=3e-3, lr_matrix=6e-3, init=0.01)
    write_run(sweep, "1_lowest_but_spiky", np.where((STEPS % 10 == 0) & (STEPS < 80), SMOOTH + 1.0, SMOOTH - 0.3),
              1 + 0.5 * np.sin(STEPS), lr=1e-2)
    write_run(sweep, "2_rising_grad", SMOOTH - 0.1, np.linspace(1, 5, 100), lr=5e-3)
    write_run(sweep, "3_diverged", np.concatenate([SMOOTH[:50], np.full(50, np.nan)]), ones, lr=3e-2)
    write_run(sweep, "4_slow", SMOOTH + 0.5, ones, lr=1e-4)
    report = select(load_config([f"sweep_dir={sweep}", "target_model=52b"]))
    order = [row["run"] for row in report["ranking"]]
    assert order[0] == "0_best"
    assert order[-1] == "3_diverged" and report["ranking"][-1]["diverged"]
    assert order.index("2_rising_grad") > order.index("0_best")
    # with all weight on the loss reached, the spiky run with the lowest loss wins
    report_loss = select(load_config([f"sweep_dir={sweep}", f"out={tmp_path / 'loss_only'}",
                                      "weights.trend_residual=0", "weights.grad_norm_instability=0"]))
    assert report_loss["winner"] == "1_lowest_but_spiky"

    out = sweep / "selection"
    assert (out / "ranking.md").read_text().count("\n|") >= 6
    saved = json.loads((out / "ranking.json").read_text())
    assert saved["winner"] == "0_best"
    transferred = (out / "transferred_52b.yaml").read_text()
    assert transferred.startswith("# @package _global_")
    overlay = yaml.safe_load(transferred)
    assert overlay["train"] == pytest.approx({"lr": 3e-3, "lr_matrix": 6e-3, "min_lr": 3e-4})
    assert overlay["model"]["init_method_std"] == 0.01 and overlay["model"]["embedding_init_std"] == 0.005
    assert overlay["model"]["mup"] == {"enabled": True, "base_hidden_size": 512, "base_ffn_hidden_size": 1344,
                                       "base_num_attention_heads": 4}
    effective = saved["transferred"]["effective_at_target"]
    assert effective["qkv"]["init_std"] == pytest.approx(0.01 / 4)       # / sqrt(8192/512)
    assert effective["qkv"]["max_lr"] == pytest.approx(6e-3 / 16)        # / (8192/512)
    assert effective["fc2"]["max_lr"] == pytest.approx(6e-3 * 1344 / 21824)
    assert effective["embedding"]["max_lr"] == 3e-3 and effective["embedding"]["init_std"] == 0.005
    assert effective["logits"]["multiplier"] == pytest.approx(0.5 / 16)


def test_missing_sweep_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="sweep_dir"):
        select(load_config([f"sweep_dir={tmp_path / 'nope'}"]))
