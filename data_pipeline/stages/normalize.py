"""Normalisation as a stage: it rewrites the text every later stage sees, and drops broken encodings."""

from __future__ import annotations

from typing import Any

from data_pipeline.normalize import normalize_document
from data_pipeline.stage import DocumentStage, register


@register
class Normalize(DocumentStage):
    """See data_pipeline/normalize.py; drop reason ``broken_encoding``."""

    name = "normalize"
    config_key = "normalize"

    def process(self, text: str, row: dict[str, Any]) -> tuple[str, str | None]:
        return normalize_document(text, self.cfg)
