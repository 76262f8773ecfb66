"""One spike-related event goes to three places: spikes.jsonl, metrics.jsonl and W&B."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Any

from pretrain.train.callbacks.metrics import Metrics
from pretrain.train.monitor import append_jsonl


class SpikeLog:
    def __init__(self, run_dir: str | Path, rank: int, metrics: Metrics) -> None:
        self.path = Path(run_dir) / "spikes.jsonl"
        self.rank, self.metrics = rank, metrics

    def write(self, row: dict[str, Any]) -> None:
        """spikes.jsonl only (rank 0)."""
        if self.rank == 0:
            append_jsonl(self.path, {"time": time.time(), **row})  # one whole line per row

    def event(self, name: str, step: int, **fields: Any) -> None:
        fields = {k: (v.value if isinstance(v, Enum) else v) for k, v in fields.items()}
        self.write({"event": name, "step": step, **fields})
        self.metrics.event(name, step, **fields)
        self.metrics.wandb_log({f"spikes/{name}": 1, **{f"spikes/{k}": v for k, v in fields.items()
                                                        if isinstance(v, (int, float)) and not isinstance(v, bool)}})
