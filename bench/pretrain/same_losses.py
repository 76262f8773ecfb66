"""Are two runs' per-step losses bitwise identical? The check behind every trainer refactor.

    python bench/pretrain/same_losses.py RUN_A RUN_B      # run dirs (or metrics.jsonl files)

Compares every step row's loss (``float.hex``, so 1 ulp counts) and the held-out rows
(per language and source), and prints the first difference. Exit 0 only when the
step sets and every value agree. Used for issue 15's loop refactor: the demo's
training run (``make demo``, 300 steps TP2) before and after, from the same seed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def read_rows(path: Path) -> list[dict]:
    path = path / "metrics.jsonl" if path.is_dir() else path
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def compare(a: Path, b: Path) -> list[str]:
    rows_a, rows_b = read_rows(a), read_rows(b)
    loss_a = {r["step"]: r["loss"] for r in rows_a if r.get("event") is None}
    loss_b = {r["step"]: r["loss"] for r in rows_b if r.get("event") is None}
    problems = []
    if sorted(loss_a) != sorted(loss_b):
        problems.append(f"step sets differ: {len(loss_a)} vs {len(loss_b)} steps")
    for step in sorted(set(loss_a) & set(loss_b)):
        if float(loss_a[step]).hex() != float(loss_b[step]).hex():
            problems.append(f"step {step}: loss {loss_a[step]!r} vs {loss_b[step]!r}")
            break
    held_a = [(r["step"], r.get("by_lang"), r.get("by_source")) for r in rows_a if r.get("event") == "heldout"]
    held_b = [(r["step"], r.get("by_lang"), r.get("by_source")) for r in rows_b if r.get("event") == "heldout"]
    if held_a != held_b:
        problems.append("held-out rows differ")
    return problems


def main() -> int:
    a, b = Path(sys.argv[1]), Path(sys.argv[2])
    problems = compare(a, b)
    steps = len([r for r in read_rows(a) if r.get("event") is None])
    print("\n".join(problems) if problems else f"identical: {steps} step losses and the held-out rows")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
