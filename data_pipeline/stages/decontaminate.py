"""Benchmark decontamination as a stage: drop documents that share n-grams with an evaluation set, or cut them."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import pyarrow as pa

from data_pipeline.decontamination import DEFAULT_FIELDS, NgramIndex, build_index, cut_spans
from data_pipeline.errors import ConfigError
from data_pipeline.stage import DocumentStage, register

ACTIONS = ("drop", "cut")


@lru_cache(maxsize=4)
def _index(spec: str) -> NgramIndex:
    """Built once per worker process: stages are rebuilt per batch, and the index takes seconds to build."""
    cfg = json.loads(spec)
    return build_index(cfg["benchmarks"], cfg["fields"], cfg["word_ngram"], cfg["word_min"], cfg["char_ngram"],
                       cfg["char_min"])


def _int(cfg: Any, key: str, default: int, least: int) -> int:
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"config key 'decontaminate.{key}': must be an integer >= {least}, got {value!r}")
    return value


@register
class Decontaminate(DocumentStage):
    """Drop reason ``contaminated:<benchmark>``; on cut documents ``decontaminated_spans`` / ``_from``.

    ``decontaminate.benchmarks``: {name: path to a jsonl file or a directory of them} (or
    {name: {path, fields}}); none configured: the stage is a no-op. ``action: drop`` drops any
    document sharing one n-gram with a benchmark (datatrove's rule). ``action: cut`` (GPT-3) removes
    the matched spans plus ``cut_margin`` characters either side and keeps the rest, unless fewer than
    ``min_remaining_chars`` remain or more than ``max_cuts`` pieces are left; then it drops as above.
    The reason names the benchmark most of the document's matched n-grams come from.
    """

    name = "decontaminate"
    config_key = "decontaminate"
    columns = (pa.field("decontaminated_spans", pa.int32()), pa.field("decontaminated_from", pa.string()))
    defaults = {"decontaminated_spans": 0}

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        benchmarks = cfg.get("benchmarks") or {}
        if not hasattr(benchmarks, "items"):
            raise ConfigError("config key 'decontaminate.benchmarks': must be a mapping {name: path}")
        self.action = cfg.get("action", "drop")
        if self.action not in ACTIONS:
            raise ConfigError(f"config key 'decontaminate.action': '{self.action}' is not one of {list(ACTIONS)}")
        fields = list(cfg.get("fields") or DEFAULT_FIELDS)
        word_n, char_n = _int(cfg, "word_ngram", 13, 1), _int(cfg, "char_ngram", 20, 1)
        word_min, char_min = _int(cfg, "word_min", 8, 1), _int(cfg, "char_min", 12, 1)
        if word_min > word_n or char_min > char_n:
            raise ConfigError("config key 'decontaminate.word_min': word_min/char_min must not exceed "
                              "word_ngram/char_ngram")
        self.margin = _int(cfg, "cut_margin", 200, 0)
        self.min_remaining = _int(cfg, "min_remaining_chars", 200, 0)
        self.max_cuts = _int(cfg, "max_cuts", 10, 1)
        spec = {"benchmarks": {str(k): (dict(v) if hasattr(v, "items") else str(v)) for k, v in benchmarks.items()},
                "fields": fields, "word_ngram": word_n, "word_min": word_min, "char_ngram": char_n,
                "char_min": char_min}
        self.index = _index(json.dumps(spec, sort_keys=True)) if benchmarks else None

    def process(self, text: str, row: dict[str, Any]) -> tuple[str, str | None]:
        match = self.index.find(text) if self.index is not None else None
        if match is None:
            return text, None
        reason = f"contaminated:{match.benchmark}"
        if self.action == "drop":
            return text, reason
        rest, cuts, pieces = cut_spans(text, match.spans, self.margin)
        if len(rest) < self.min_remaining or pieces > self.max_cuts:
            return text, reason
        row["decontaminated_spans"] = cuts
        row["decontaminated_from"] = match.benchmark
        return rest, None
