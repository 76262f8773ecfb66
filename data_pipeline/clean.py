"""The configured per-document stages (data_pipeline/stages/) applied to one batch, then the signing for dedup.

Called on batches of reader rows by the Ray task of data_pipeline/stage1.py.
Every input row leaves as exactly one output row whose ``status`` says what
happened to it (kept, dropped with stage and reason, or quarantined), so
nothing can be lost between reading and the report. Dropped rows keep only
the first 200 characters: the report needs an example, not the whole document.
"""

from __future__ import annotations

import traceback
from typing import Any

import pyarrow as pa
import xxhash

from data_pipeline.minhash import band_hashes, shingle_hashes, signatures
from data_pipeline.normalize import dedup_key_text
from data_pipeline.stage import REGISTRY, DocumentStage
from data_pipeline.stages import build_stages

EXAMPLE_CHARS = 200
DEDUP_TEXT = "_dedup_text"  # transient key of a kept row: the text dedup signs (not a column)
# Columns every row has whatever stages run. lang/lang_score are here, not the language stage's: dedup
# and the splits read them, so a run without language id still needs them ("" and 0.0).
CORE_COLUMNS = (
    pa.field("file_key", pa.string()), pa.field("id", pa.string()), pa.field("doc_id", pa.string()),
    pa.field("text", pa.string()),
    pa.field("source", pa.string()), pa.field("lang", pa.string()), pa.field("lang_score", pa.float64()),
    pa.field("lang_hint", pa.string()), pa.field("status", pa.string()), pa.field("stage", pa.string()),
    pa.field("reason", pa.string()), pa.field("file", pa.string()), pa.field("line", pa.int64()),
    pa.field("error", pa.string()), pa.field("n_chars", pa.int64()), pa.field("n_bytes", pa.int64()),
    # from the input where it has them (WARC headers, a record's url field): null otherwise. meta is a JSON
    # object of the fields read.meta_fields keeps (WARC: crawl date, content type, how the charset was found).
    pa.field("url", pa.string()), pa.field("domain", pa.string()), pa.field("meta", pa.string()))
SIGN_COLUMNS = (pa.field("exact_hash", pa.uint64()), pa.field("bands", pa.list_(pa.uint64())),
                pa.field("signature", pa.list_(pa.uint32())))


def stage1_schema() -> pa.Schema:
    """Core columns, then every registered stage's (configured or not, so all stage-1 files share one schema)."""
    fields = [*CORE_COLUMNS, *(f for cls in REGISTRY.values() for f in cls.columns), *SIGN_COLUMNS]
    names = [f.name for f in fields]
    if len(set(names)) != len(names):
        raise ValueError(f"a stage adds a column that already exists: {sorted({n for n in names if names.count(n) > 1})}")
    return pa.schema(fields)


def blank_row(schema: pa.Schema) -> dict[str, Any]:
    """The values a row starts from, copied per document: null unless a stage declares a default."""
    row: dict[str, Any] = {f.name: None for f in schema}
    row.update(lang="", lang_score=0.0)
    for cls in REGISTRY.values():
        row.update(cls.defaults)
    return row


def clean_record(rec: dict, stages: list[DocumentStage], blank: dict[str, Any]) -> dict:
    """Run ``stages`` (from ``build_stages``) on one reader row; ``blank`` comes from ``blank_row``."""
    row = dict(blank)
    # id is the input's own (kept as metadata, possibly repeated across files); doc_id is the pipeline's,
    # unique in a run whatever the input says, and the one dedup and the writer go by.
    row.update(file_key=rec["file_key"], id=rec.get("id"), doc_id=f"{rec['file_key']}:{rec.get('line')}",
               source=rec.get("source"), lang_hint=rec.get("lang_hint"), url=rec.get("url"), domain=rec.get("domain"),
               meta=rec.get("meta"), file=rec.get("file"), line=rec.get("line"), bands=[], signature=[])
    if rec["kind"] == "quarantine":
        row.update(status="quarantined", stage="read", reason="malformed", error=rec["error"],
                   text=rec.get("raw") or "", id=f"{rec['file']}:{rec['line']}")
        return row
    if rec["kind"] == "drop":  # not a document (a WARC request record, an HTTP 404): counted with its reason
        row.update(status="dropped", stage=rec["stage"], reason=rec["reason"], text=(rec.get("text") or "")[:EXAMPLE_CHARS])
        return row
    text = rec["text"]
    for stage in stages:
        try:
            text, reason = stage.process(text, row)
        except Exception as exc:  # one document that breaks a stage costs that document, not the run
            return _stage_failed(rec, stage.name, exc, blank)
        if reason:
            row.update(status="dropped", stage=stage.name, reason=reason, text=text[:EXAMPLE_CHARS])
            return row
    key_text = text
    for stage in stages:
        key_text = stage.dedup_text(key_text, row)
    row.update(status="kept", text=text, n_chars=len(text), n_bytes=len(text.encode("utf-8")),
               exact_hash=xxhash.xxh64_intdigest(dedup_key_text(key_text).encode("utf-8", "surrogatepass")))
    row[DEDUP_TEXT] = key_text
    return row


def _where(exc: BaseException) -> str:
    """``file:line`` of the innermost frame that raised, so the quarantine row points at the code."""
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"


def _stage_failed(rec: dict, stage: str, exc: Exception, blank: dict[str, Any]) -> dict:
    """The quarantine row of a document on which ``stage`` raised: the input text kept whole, the error named.

    Built from ``blank`` again, not from the half-filled row: the failing stage may have put values of
    any type on it before raising, and one bad value would fail the whole batch's table.
    """
    row = dict(blank)
    row.update(file_key=rec["file_key"], id=rec.get("id"), doc_id=f"{rec['file_key']}:{rec.get('line')}",
               source=rec.get("source"), lang_hint=rec.get("lang_hint"), file=rec.get("file"),
               line=rec.get("line"), bands=[], signature=[], status="quarantined", stage=stage,
               reason="stage_error", text=rec["text"],
               error=f"stage '{stage}' raised {type(exc).__name__}: {exc} (at {_where(exc)})")
    return row


def clean_records(records: list[dict], cfg: Any) -> pa.Table:
    """Clean every reader row, then MinHash all kept rows in one vectorised call."""
    stages = build_stages(cfg)
    schema = stage1_schema()
    blank = blank_row(schema)
    rows = [clean_record(rec, stages, blank) for rec in records]
    kept = [r for r in rows if r["status"] == "kept"]
    if kept and cfg.dedup.fuzzy:
        shingles = [shingle_hashes(r[DEDUP_TEXT], r["lang"], cfg.dedup) for r in kept]
        sigs = signatures(shingles, int(cfg.dedup.num_perm), int(cfg.dedup.seed))
        bands = band_hashes(sigs, int(cfg.dedup.bands), int(cfg.dedup.rows))
        for r, s, b, sig in zip(kept, shingles, bands, sigs):
            if len(s):  # no shingles: nothing to compare, never a near duplicate
                r["bands"], r["signature"] = b.tolist(), sig.tolist()
    for r in kept:
        del r[DEDUP_TEXT]
    return pa.Table.from_pylist(rows, schema=schema)
