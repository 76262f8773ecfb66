"""Tele-FLM's three proxy-run criteria, computed from one run's metrics.jsonl.

Tele-FLM (arXiv 2404.16645 §μP) picked its hyperparameters on the proxy by
*loss descent*, *trend stability* and *gradient-norm stability*; a steadily
rising gradient norm was read as divergence risk.  Each criterion here is one
number where lower is better, so runs can be ranked per criterion:

* ``final_loss``: mean loss over the last ``window`` fraction of steps (the
  loss reached; equivalent to ranking by descent from a common start).
* ``trend_residual``: RMS distance of the loss from its best monotone
  non-increasing fit (isotonic regression), relative to the final loss:
  0 for a curve that only goes down, large for bumps, spikes and rebounds.
* ``grad_norm_instability``: coefficient of variation of the gradient norm
  over the second half plus its relative rise per 100 steps there (clipped
  at 0: a falling norm is not penalised).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass
class RunCriteria:
    final_loss: float
    loss_descent: float
    trend_residual: float
    grad_norm_instability: float
    diverged: bool
    steps: int

    def as_dict(self) -> dict:
        return asdict(self)


def read_metrics(path: Path) -> list[dict]:
    """Rows of a metrics.jsonl that carry a training loss (eval-only rows are skipped)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        row = json.loads(line)
        if "loss" in row and "step" in row:
            rows.append(row)
    rows.sort(key=lambda r: r["step"])
    return rows


def isotonic_non_increasing(values: np.ndarray) -> np.ndarray:
    """Pool-adjacent-violators fit of the closest (L2) non-increasing sequence."""
    blocks: list[list[float]] = []  # [sum, count]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] < blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    return np.concatenate([np.full(int(c), s / c) for s, c in blocks])


def compute_criteria(rows: list[dict], window: float = 0.2) -> RunCriteria:
    if not rows:
        raise ValueError("metrics.jsonl has no rows with 'step' and 'loss'")
    if not 0.0 < window <= 1.0:
        raise ValueError(f"window must be in (0, 1], got {window}")
    loss = np.asarray([float(r["loss"]) for r in rows])
    steps = np.asarray([float(r["step"]) for r in rows])
    diverged = bool(not np.all(np.isfinite(loss)))
    tail = max(1, int(round(window * len(loss))))
    finite = loss[np.isfinite(loss)]
    if diverged or finite.size == 0:
        return RunCriteria(math.inf, -math.inf, math.inf, math.inf, True, len(rows))
    final = float(np.mean(loss[-tail:]))
    head = float(np.mean(loss[:tail]))
    if final > head:  # trained the wrong way: treated as diverged
        diverged = True
    fitted = isotonic_non_increasing(loss)
    residual = float(np.sqrt(np.mean((loss - fitted) ** 2)) / max(final, 1e-12))
    grad = np.asarray([float(r.get("grad_norm", np.nan)) for r in rows])
    half = grad[len(grad) // 2:]
    half_steps = steps[len(grad) // 2:]
    ok = np.isfinite(half)
    if ok.sum() >= 2 and np.mean(half[ok]) > 0:
        mean = float(np.mean(half[ok]))
        cv = float(np.std(half[ok]) / mean)
        slope = float(np.polyfit(half_steps[ok], half[ok] / mean, 1)[0]) * 100.0
        instability = cv + max(0.0, slope)
    elif np.any(~np.isfinite(grad)):
        instability = math.inf
    else:
        instability = 0.0
    return RunCriteria(final_loss=final, loss_descent=head - final, trend_residual=residual,
                       grad_norm_instability=instability, diverged=diverged, steps=len(rows))
