"""Rank a proxy sweep and transfer the winner: ``python -m pretrain.scaling.select sweep_dir=DIR``.

Why ranks, not a weighted score: the three criteria (``criteria.py``) have
unrelated units; Tele-FLM weighed them by judgement.  Ranking each criterion
across runs and summing the weighted ranks (``weights.*`` in
``configs/sweep/select.yaml``) is unit-free; ties go to the lower final loss.
Diverged runs (non-finite loss, or loss ending above where it started) are
listed last and never chosen.

Reads every ``<sweep_dir>/**/metrics.jsonl`` with its ``config.yaml`` (the
trainer writes both into ``run_dir``; ``.hydra/config.yaml`` is the fallback),
writes ``<out>/ranking.md``, ``<out>/ranking.json`` and
``<out>/transferred_<target>.yaml``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from pretrain.scaling.criteria import RunCriteria, compute_criteria, read_metrics
from pretrain.scaling.transfer import hyperparameters_of, transferred_config, write_transferred_yaml

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
CRITERIA = ("final_loss", "trend_residual", "grad_norm_instability")


@dataclass
class SweepRun:
    name: str
    path: Path
    config: DictConfig
    criteria: RunCriteria
    hyperparameters: dict[str, float]


def load_config(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose("sweep/select", overrides=overrides)


def run_config_for(metrics_path: Path) -> DictConfig:
    for candidate in (metrics_path.parent / "config.yaml", metrics_path.parent / ".hydra" / "config.yaml"):
        if candidate.is_file():
            return OmegaConf.load(candidate)
    raise FileNotFoundError(f"no config.yaml next to {metrics_path} (nor .hydra/config.yaml)")


def discover_runs(sweep_dir: Path, window: float) -> list[SweepRun]:
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep_dir '{sweep_dir}' is not a directory")
    runs = []
    for metrics_path in sorted(sweep_dir.rglob("metrics.jsonl")):
        config = run_config_for(metrics_path)
        runs.append(SweepRun(name=str(metrics_path.parent.relative_to(sweep_dir)), path=metrics_path.parent,
                             config=config, criteria=compute_criteria(read_metrics(metrics_path), window),
                             hyperparameters=hyperparameters_of(config)))
    if not runs:
        raise FileNotFoundError(f"sweep_dir '{sweep_dir}' holds no metrics.jsonl")
    return runs


def rank_runs(runs: list[SweepRun], weights: dict[str, float]) -> list[dict[str, Any]]:
    """Weighted rank-sum over the criteria, healthy runs first; rank 1 is the winner."""
    unknown = set(weights) - set(CRITERIA)
    if unknown:
        raise ValueError(f"weights: unknown criteria {sorted(unknown)}; known: {list(CRITERIA)}")
    healthy = [r for r in runs if not r.criteria.diverged]
    scores = {id(r): 0.0 for r in healthy}
    for criterion in CRITERIA:
        values = np.asarray([getattr(r.criteria, criterion) for r in healthy])
        # average ranks for ties (1 = best)
        order = values.argsort(kind="stable")
        ranks = np.empty(len(values))
        ranks[order] = np.arange(1, len(values) + 1)
        for value in np.unique(values):
            tied = values == value
            ranks[tied] = ranks[tied].mean()
        for run, rank in zip(healthy, ranks):
            scores[id(run)] += float(weights.get(criterion, 0.0)) * float(rank)
    ordered = sorted(healthy, key=lambda r: (scores[id(r)], r.criteria.final_loss))
    ordered += sorted((r for r in runs if r.criteria.diverged), key=lambda r: r.name)
    table = []
    for position, run in enumerate(ordered, start=1):
        table.append({"rank": position, "run": run.name, "score": scores.get(id(run)),
                      **run.criteria.as_dict(), "hyperparameters": run.hyperparameters})
    return table


def ranking_markdown(table: list[dict[str, Any]]) -> str:
    hp_names = list(table[0]["hyperparameters"])
    header = ["rank", "run", "score", "final loss", "descent", "trend resid.", "grad-norm instab.", "diverged",
              *hp_names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table:
        score = "-" if row["score"] is None else f"{row['score']:.1f}"
        cells = [str(row["rank"]), row["run"], score, f"{row['final_loss']:.4f}", f"{row['loss_descent']:.4f}",
                 f"{row['trend_residual']:.4f}", f"{row['grad_norm_instability']:.3f}",
                 "yes" if row["diverged"] else "no", *(f"{row['hyperparameters'][h]:.4g}" for h in hp_names)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def target_run_config(target_model: str) -> DictConfig:
    """The trainer's config with ``model=<target_model>`` (the transfer's destination)."""
    from hydra import compose, initialize_config_dir

    import pretrain.config.schema  # noqa: F401  registers pretrain_schema

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose("pretrain", overrides=[f"model={target_model}"])


def select(cfg: DictConfig) -> dict[str, Any]:
    sweep_dir = Path(cfg.sweep_dir)
    out = Path(cfg.out) if cfg.get("out") else sweep_dir / "selection"
    out.mkdir(parents=True, exist_ok=True)
    runs = discover_runs(sweep_dir, float(cfg.window))
    table = rank_runs(runs, dict(cfg.weights))
    if table[0]["diverged"]:
        raise RuntimeError(f"every run in {sweep_dir} diverged: nothing to transfer")
    winner = next(r for r in runs if r.name == table[0]["run"])
    target = transferred_config(winner.hyperparameters, winner.config.model, target_run_config(cfg.target_model))
    yaml_path = out / f"transferred_{cfg.target_model}.yaml"
    effective = write_transferred_yaml(target, yaml_path, source=f"{sweep_dir}/{winner.name}")
    report = {"sweep_dir": str(sweep_dir), "winner": winner.name, "target_model": cfg.target_model,
              "weights": dict(cfg.weights), "window": float(cfg.window), "ranking": table,
              "transferred": {"path": str(yaml_path), "base_values": winner.hyperparameters,
                              "effective_at_target": effective}}
    (out / "ranking.json").write_text(json.dumps(report, indent=1, default=float))
    (out / "ranking.md").write_text(
        f"# Proxy sweep ranking: {sweep_dir}\n\nWinner: **{winner.name}**, transferred to "
        f"`{cfg.target_model}` in `{yaml_path.name}`.\n\n" + ranking_markdown(table))
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = load_config(list(sys.argv[1:] if argv is None else argv))
    report = select(cfg)
    print((Path(report["transferred"]["path"]).parent / "ranking.md").read_text())
    print(f"transferred config: {report['transferred']['path']}")
    return report


if __name__ == "__main__":
    main()
