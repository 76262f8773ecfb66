"""μP coordinate check: ``python -m pretrain.tools.coord_check [hydra overrides]``.

Why: a μP implementation is right when every layer's activation scale stays
flat as width grows after a few training steps, and wrong (growing with
width) under the standard parametrization (Tensor Programs V §6, microsoft/mup
``get_coord_data``).  This trains the model of ``configs/experiment/
mup_coord_check.yaml`` at ``coord_check.widths`` (heads of ``coord_check.
head_dim`` added, the smallest width being the μP base) for
``coord_check.steps`` Adam steps, with μP on and off, on the tokens of
``data.path`` (random tokens when null), and writes

* ``<out>/coord_check.json``: mean |x| per layer, width, step and
  parametrization, plus the slope of log(mean |x|) against log(width);
* ``<out>/coord_check.png``: one panel per step, μP above, standard below.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def load_config(overrides: list[str], experiment: str = "mup_coord_check") -> DictConfig:
    """The trainer's ``pretrain`` config with an experiment overlay and CLI overrides."""
    from hydra import compose, initialize_config_dir

    from pretrain.config.schema import allow_new_keys  # also registers pretrain_schema

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        try:
            cfg = compose("pretrain", overrides=[f"+experiment={experiment}", *overrides])
        except Exception as error:  # the defaults list may already name an experiment group
            if "experiment" not in str(error):
                raise
            cfg = compose("pretrain", overrides=[f"experiment={experiment}", *overrides])
    # Per-width model configs are derived in code (widths, base shapes): allow new keys
    # (e.g. model.mup.depth_scaled_block_output), on every nested typed node too.
    allow_new_keys(cfg)
    return cfg


def log_log_slope(widths: list[int], values: list[float]) -> float:
    """Least-squares slope of log(value) against log(width): 0 = flat, 1 = ∝ width."""
    x, y = np.log(np.asarray(widths, float)), np.log(np.asarray(values, float))
    return float(np.polyfit(x, y, 1)[0])


def run_one(cfg: DictConfig, width: int, parametrization: str, stream: np.ndarray) -> list[dict[str, float]]:
    """Train one width under one parametrization; per-step mean |activation| by layer label."""
    from pretrain.scaling.tiny_train import ActivationProbe, build_single_process_model, train
    from pretrain.scaling.tokens import window_batches
    from pretrain.scaling.widths import model_at_width, with_base

    check = cfg.coord_check
    head_dim = int(check.head_dim)
    base = model_at_width(cfg.model, min(int(w) for w in check.widths) // head_dim, head_dim)
    model_cfg = with_base(model_at_width(cfg.model, width // head_dim, head_dim), base,
                          enabled=parametrization == "mup")
    run_cfg = OmegaConf.merge(cfg, {"model": model_cfg})
    model = build_single_process_model(run_cfg)
    probe = ActivationProbe()
    probe.attach(model)
    batches = window_batches(stream, cfg.train.micro_batch_size, cfg.model.seq_length, seed=cfg.train.seed)
    train(run_cfg, model, batches, steps=int(check.steps), probe=probe)
    probe.detach()
    return probe.records


def coordinate_data(cfg: DictConfig) -> dict[str, Any]:
    from pretrain.scaling.tokens import load_token_stream, random_stream, vocab_size_of

    check = cfg.coord_check
    widths = sorted(int(w) for w in check.widths)
    for w in widths:
        if w % int(check.head_dim):
            raise ValueError(f"coord_check.widths: {w} is not a multiple of coord_check.head_dim={check.head_dim}")
    data_path = cfg.data.path
    needed = 64 * cfg.train.micro_batch_size * cfg.model.seq_length
    if data_path:
        stream = load_token_stream(data_path, "train", max_tokens=needed)
        cfg = OmegaConf.merge(cfg, {"model": {"vocab_size": vocab_size_of(data_path)}})
    else:
        stream = random_stream(cfg.model.vocab_size, needed, seed=cfg.train.seed)
    results: dict[str, Any] = {"widths": widths, "steps": int(check.steps),
                               "tokens": "data" if data_path else "random", "records": {}, "slopes": {}}
    for parametrization in check.parametrizations:
        if parametrization not in ("mup", "sp"):
            raise ValueError(f"coord_check.parametrizations: unknown {parametrization!r} (mup|sp)")
        per_width = {w: run_one(cfg, w, parametrization, stream) for w in widths}
        results["records"][parametrization] = {str(w): r for w, r in per_width.items()}
        labels = list(per_width[widths[0]][0])
        results["slopes"][parametrization] = [
            {label: log_log_slope(widths, [per_width[w][step][label] for w in widths]) for label in labels}
            for step in range(int(check.steps))]
    return results


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = list(results["records"])
    steps, widths = results["steps"], results["widths"]
    fig, axes = plt.subplots(len(params), steps, figsize=(3.2 * steps, 3.0 * len(params)),
                             squeeze=False, sharey="row")
    for row, parametrization in enumerate(params):
        records = results["records"][parametrization]
        labels = list(records[str(widths[0])][0])
        for step in range(steps):
            ax = axes[row][step]
            for label in labels:
                ax.plot(widths, [records[str(w)][step][label] for w in widths], marker="o", label=label,
                        linewidth=2.5 if label == "logits" else 1.0)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            slope = results["slopes"][parametrization][step]["logits"]
            ax.set_title(f"{parametrization} step {step + 1}\nlogit slope {slope:+.2f}", fontsize=9)
            ax.set_xlabel("width")
            if step == 0:
                ax.set_ylabel("mean |x|")
    axes[0][-1].legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = load_config(list(sys.argv[1:] if argv is None else argv))
    out = Path(cfg.coord_check.out)
    out.mkdir(parents=True, exist_ok=True)
    results = coordinate_data(cfg)
    (out / "coord_check.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "coord_check.png")
    last = results["steps"] - 1
    for parametrization, slopes in results["slopes"].items():
        line = ", ".join(f"{k} {v:+.2f}" for k, v in slopes[last].items())
        print(f"{parametrization}: slope of log mean|x| vs log width at step {last + 1}: {line}")
    print(f"wrote {out / 'coord_check.json'} and {out / 'coord_check.png'}")
    return results


if __name__ == "__main__":
    main()
