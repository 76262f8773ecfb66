"""The fastText quality classifier as a stage: a ``fasttext_quality`` column, and an optional per-language floor."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from data_pipeline.model_config import lang_blocks, max_chars, number
from data_pipeline.quality_model import load_classifier, score
from data_pipeline.stage import DocumentStage, register


@register
class QualityModel(DocumentStage):
    """``fasttext_quality``: P(high quality) from the language's classifier; null for languages without one.

    ``quality_model.langs.<lang>``: ``model`` (a fastText .bin/.ftz, see
    ``data_pipeline.tools.train_quality_classifier``) and ``min_score`` (null: score only). A document
    below ``min_score`` is dropped with reason ``low_quality_score``.
    """

    name = "quality_model"
    config_key = "quality_model"
    columns = (pa.field("fasttext_quality", pa.float32()),)
    requires = ("language",)  # the model and threshold are per language

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.blocks = self.check(cfg)
        self.max_chars = max_chars(cfg, self.config_key)
        self.models = {lang: load_classifier(block["model"]) for lang, block in self.blocks.items()}

    @classmethod
    def check(cls, cfg: Any) -> dict[str, dict[str, Any]]:
        """The checked ``langs`` blocks (``min_score`` as a float or None); ConfigError naming the bad key."""
        blocks = lang_blocks(cfg, cls.config_key)
        for lang, block in blocks.items():
            block["min_score"] = number(block, "min_score", f"{cls.config_key}.langs.{lang}", 0.0, 1.0)
        max_chars(cfg, cls.config_key)
        return blocks

    def process(self, text: str, row: dict[str, Any]) -> tuple[str, str | None]:
        model = self.models.get(row["lang"])
        if model is None:
            return text, None
        value = score(model, text, self.max_chars)
        row["fasttext_quality"] = value
        floor = self.blocks[row["lang"]]["min_score"]
        return text, ("low_quality_score" if floor is not None and value < floor else None)
