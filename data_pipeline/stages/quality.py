"""Quality rules as a stage: every signal is stored, so thresholds can be re-tuned from stage-1 tables."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from data_pipeline.quality import SIGNALS, quality_verdict
from data_pipeline.stage import DocumentStage, register


@register
class Quality(DocumentStage):
    """Fills ``q_<signal>``; null on rows dropped before this stage."""

    name = "quality"
    config_key = "quality"
    columns = tuple(pa.field(f"q_{k}", pa.float32()) for k in SIGNALS)
    requires = ("language",)  # thresholds are per language

    def process(self, text: str, row: dict[str, Any]) -> tuple[str, str | None]:
        reason, signals = quality_verdict(text, row["lang"], self.cfg)
        row.update({f"q_{k}": v for k, v in signals.items()})
        return text, reason
