"""Language identification as a stage: the label it puts on the row picks quality thresholds and dedup shingles."""

from __future__ import annotations

from typing import Any

from data_pipeline.language_id import identify_document, language_verdict
from data_pipeline.stage import DocumentStage, register


@register
class Language(DocumentStage):
    """Fills ``lang``/``lang_score``.

    Those two are core columns, not this stage's: dedup and the splits read
    them even when the stage is off (then ``""`` and 0.0).
    """

    name = "language"
    config_key = "language"

    def process(self, text: str, row: dict[str, Any]) -> tuple[str, str | None]:
        lang, score = identify_document(text, self.cfg)
        row["lang"], row["lang_score"] = lang, score
        return text, language_verdict(lang, score, self.cfg)
