"""A stage is one class: registering it is enough for config, cleaning and the stage-1 schema to know it."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from data_pipeline.clean import clean_records, stage1_schema
from data_pipeline.config import ConfigError, plain, validate
from data_pipeline.stage import REGISTRY, DocumentStage, register
from data_pipeline.stages import build_stages

from .conftest import load_config, read_corpus

# The stage-1 layout. Resumed runs mix files written before and after a change and the writer reads them
# as one, so a change here must bump stage1.STAGE1_FORMAT (3 added url, domain, meta and zh_script; 4 the decontaminated_* columns).
BUILTIN_COLUMNS = [
    "file_key", "id", "doc_id", "text", "source", "lang", "lang_score", "lang_hint", "status", "stage", "reason", "file",
    "line", "error", "n_chars", "n_bytes", "url", "domain", "meta", "decontaminated_spans", "decontaminated_from",
    "perplexity", "perplexity_bucket", "pii_email", "pii_ip", "pii_phone", "pii_cn_id", "pii_us_ssn",
    "q_units", "q_mean_word_length", "q_alpha_words", "q_dup_line_fraction", "q_dup_line_char_fraction",
    "q_top_ngram_char_fraction", "q_dup_ngram_char_fraction", "q_line_punct_ratio", "q_short_line_ratio",
    "q_cjk_share", "q_cjk_punct_ratio", "fasttext_quality", "zh_script", "exact_hash", "bands", "signature"]


class BannedWord(DocumentStage):
    """The smallest real filter: drop documents that contain a configured word, count it on the rest."""

    name = "banned_word"
    config_key = "banned_word"
    columns = (pa.field("banned_hits", pa.int32()),)
    defaults = {"banned_hits": 0}

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.word = cfg.word.lower()

    def process(self, text: str, row: dict[str, Any]) -> tuple[str, str | None]:
        row["banned_hits"] = hits = text.lower().count(self.word)
        return text, "banned_word" if hits else None


@pytest.fixture
def banned_word():
    """Registered for one test only: the registry is process-wide, and other tests expect the built-in schema."""
    register(BannedWord)
    yield BannedWord
    del REGISTRY[BannedWord.name]


def _reader_rows(texts: list[str]) -> list[dict]:
    return [{"kind": "record", "id": f"doc{i}", "text": t, "line": i + 1, "source": "test", "lang_hint": None,
             "file": "test.jsonl", "file_key": "0-test", "error": None, "raw": None} for i, t in enumerate(texts)]


def test_builtin_stages_keep_the_stage1_column_layout():
    assert stage1_schema().names == BUILTIN_COLUMNS
    assert list(REGISTRY) == ["decontaminate", "language", "normalize", "perplexity", "pii", "quality",
                              "quality_model", "url_filter", "zh_script"]


def test_a_registered_stage_runs_through_clean_records(banned_word):
    docs = [r["text"] for r in read_corpus("en_docs")[:3]]
    docs[1] = docs[1] + "\n\nWin big at the Casino tonight."
    cfg = plain(load_config(input="x", output="y", stages=["normalize", "language", "banned_word", "quality", "pii"],
                            banned_word={"word": "casino"}))
    validate(load_config(input="x", output="y", stages=list(cfg.stages), banned_word={"word": "casino"}))

    table = clean_records(_reader_rows(docs), cfg)

    assert table.schema.field("banned_hits").type == pa.int32()
    assert table.schema.names.index("banned_hits") < table.schema.names.index("exact_hash")  # before the signing columns
    rows = {r["id"]: r for r in table.to_pylist()}
    dropped = rows["doc1"]
    assert (dropped["status"], dropped["stage"], dropped["reason"], dropped["banned_hits"]) == \
        ("dropped", "banned_word", "banned_word", 1)
    assert dropped["lang"] == "en"  # the stages before it ran
    assert dropped["q_units"] is None  # the stages after it did not
    for doc_id in ("doc0", "doc2"):
        assert (rows[doc_id]["status"], rows[doc_id]["banned_hits"]) == ("kept", 0)
        assert rows[doc_id]["q_units"] > 0


def test_an_unconfigured_stage_still_has_its_column(banned_word):
    cfg = plain(load_config(input="x", output="y"))
    table = clean_records(_reader_rows(["Plain text about nothing in particular."]), cfg)
    assert table.column("banned_hits").to_pylist() == [0]


def test_unknown_stage_names_the_key_and_the_known_stages():
    cfg = plain(load_config(input="x", output="y", stages=["normalize", "sparkle"]))
    with pytest.raises(ConfigError, match=r"config key 'stages': unknown stage 'sparkle'; known: \[.*'normalize'.*\]"):
        build_stages(cfg)


def test_a_stage_without_its_config_block_names_the_block(banned_word):
    cfg = plain(load_config(input="x", output="y", stages=["banned_word"]))
    with pytest.raises(ConfigError, match="config key 'banned_word'"):
        build_stages(cfg)


def test_a_stage_cannot_take_another_stages_name_or_column():
    class Impostor(BannedWord):
        name = "pii"

    class Overlap(BannedWord):
        columns = (pa.field("q_units", pa.float32()),)

    with pytest.raises(ValueError, match="registered twice"):
        register(Impostor)
    with pytest.raises(ValueError, match="already added by stage 'quality'"):
        register(Overlap)
    assert "banned_word" not in REGISTRY and REGISTRY["pii"].__name__ == "Pii"
