"""KenLM perplexity as a stage: ``perplexity`` and CCNet's ``perplexity_bucket``, and an optional ceiling."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from data_pipeline.errors import ConfigError
from data_pipeline.model_config import lang_blocks, max_chars, number
from data_pipeline.perplexity import bucket, load_lm, perplexity
from data_pipeline.stage import DocumentStage, register


@register
class Perplexity(DocumentStage):
    """``perplexity`` under the language's n-gram model and its ``perplexity_bucket`` (head / middle / tail).

    ``perplexity.langs.<lang>``: ``model`` (ARPA, .arpa.gz or KenLM binary), ``cutoffs`` (two
    perplexities: below the first is head, from the second on tail; CCNet's 33rd/66th percentiles of a
    reference sample, ``data_pipeline.tools.build_lm --reference``) and ``max_perplexity`` (null: score
    only). A document above it is dropped with reason ``high_perplexity``. Languages without a block,
    and documents without a token, get nulls and are kept.
    """

    name = "perplexity"
    config_key = "perplexity"
    columns = (pa.field("perplexity", pa.float32()), pa.field("perplexity_bucket", pa.string()))
    requires = ("language",)

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.blocks = self.check(cfg)
        self.max_chars = max_chars(cfg, self.config_key)
        self.models = {lang: load_lm(block["model"]) for lang, block in self.blocks.items()}

    @classmethod
    def check(cls, cfg: Any) -> dict[str, dict[str, Any]]:
        """The checked ``langs`` blocks; ConfigError naming the bad key."""
        blocks = lang_blocks(cfg, cls.config_key)
        for lang, block in blocks.items():
            where = f"{cls.config_key}.langs.{lang}"
            cutoffs = block.get("cutoffs")
            if (not isinstance(cutoffs, (list, tuple)) or len(cutoffs) != 2
                    or not all(isinstance(c, (int, float)) and not isinstance(c, bool) and c > 0 for c in cutoffs)
                    or cutoffs[0] > cutoffs[1]):
                raise ConfigError(f"config key '{where}.cutoffs': must be two increasing positive perplexities "
                                  f"[head/middle, middle/tail], got {cutoffs!r}")
            block["cutoffs"] = [float(c) for c in cutoffs]
            block["max_perplexity"] = number(block, "max_perplexity", where, 1.0)
        max_chars(cfg, cls.config_key)
        return blocks

    def process(self, text: str, row: dict[str, Any]) -> tuple[str, str | None]:
        model = self.models.get(row["lang"])
        if model is None:
            return text, None
        value = perplexity(model, text, self.max_chars)
        if value is None:
            return text, None
        block = self.blocks[row["lang"]]
        row["perplexity"] = value
        row["perplexity_bucket"] = bucket(value, block["cutoffs"])
        ceiling = block["max_perplexity"]
        return text, ("high_perplexity" if ceiling is not None and value > ceiling else None)
