"""PII scrubbing as a stage: it never drops, it rewrites and counts, so the report can say how much."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from data_pipeline.pii import PLACEHOLDERS, scrub
from data_pipeline.stage import DocumentStage, register

PII_KINDS = tuple(PLACEHOLDERS)


@register
class Pii(DocumentStage):
    """Fills ``pii_<kind>`` with replacement counts; 0, not null, where nothing was scrubbed."""

    name = "pii"
    config_key = "pii"
    columns = tuple(pa.field(f"pii_{k}", pa.int32()) for k in PII_KINDS)
    defaults = {f"pii_{k}": 0 for k in PII_KINDS}

    def process(self, text: str, row: dict[str, Any]) -> tuple[str, str | None]:
        text, counts = scrub(text, self.cfg)
        row.update({f"pii_{k}": v for k, v in counts.items()})
        return text, None
