"""The per-document stages, applied to one batch: normalise, identify language, filter, scrub PII, sign.

Called on batches of reader rows by the Ray task of data_pipeline/stage1.py.
Every input row leaves as exactly one output row whose ``status`` says what
happened to it (kept, dropped with stage and reason, or quarantined), so
nothing can be lost between reading and the report. Dropped rows keep only
the first 200 characters: the report needs an example, not the whole document.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import xxhash

from data_pipeline.language_id import identify_document, language_verdict
from data_pipeline.minhash import band_hashes, shingle_hashes, signatures
from data_pipeline.normalize import dedup_key_text, normalize_document
from data_pipeline.pii import PLACEHOLDERS, scrub
from data_pipeline.quality import SIGNALS, quality_verdict

EXAMPLE_CHARS = 200
PII_KINDS = tuple(PLACEHOLDERS)
STAGE1_SCHEMA = pa.schema(
    [("file_key", pa.string()), ("id", pa.string()), ("text", pa.string()), ("source", pa.string()),
     ("lang", pa.string()), ("lang_score", pa.float64()), ("lang_hint", pa.string()),
     ("status", pa.string()), ("stage", pa.string()), ("reason", pa.string()),
     ("file", pa.string()), ("line", pa.int64()), ("error", pa.string()),
     ("n_chars", pa.int64()), ("n_bytes", pa.int64())]
    + [(f"pii_{k}", pa.int32()) for k in PII_KINDS]
    + [(f"q_{k}", pa.float32()) for k in SIGNALS]
    + [("exact_hash", pa.uint64()), ("bands", pa.list_(pa.uint64())), ("signature", pa.list_(pa.uint32()))])


def _empty_row(rec: dict) -> dict:
    row = {f.name: None for f in STAGE1_SCHEMA}
    row.update(file_key=rec["file_key"], id=rec.get("id"), source=rec.get("source"), lang_hint=rec.get("lang_hint"),
               file=rec.get("file"), line=rec.get("line"), lang="", lang_score=0.0, bands=[], signature=[])
    for k in PII_KINDS:
        row[f"pii_{k}"] = 0
    return row


def clean_record(rec: dict, cfg: Any) -> dict:
    """Run the configured per-document stages on one reader row."""
    row = _empty_row(rec)
    if rec["kind"] == "quarantine":
        row.update(status="quarantined", stage="read", reason="malformed", error=rec["error"],
                   text=rec.get("raw") or "", id=f"{rec['file']}:{rec['line']}")
        return row
    text = rec["text"]

    def drop(stage: str, reason: str) -> dict:
        row.update(status="dropped", stage=stage, reason=reason, text=text[:EXAMPLE_CHARS])
        return row

    for stage in cfg.stages:
        if stage == "normalize":
            text, reason = normalize_document(text, cfg.normalize)
            if reason:
                return drop("normalize", reason)
        elif stage == "language":
            row["lang"], row["lang_score"] = identify_document(text, cfg.language)
            reason = language_verdict(row["lang"], row["lang_score"], cfg.language)
            if reason:
                return drop("language", reason)
        elif stage == "quality":
            reason, signals = quality_verdict(text, row["lang"], cfg.quality)
            row.update({f"q_{k}": v for k, v in signals.items()})
            if reason:
                return drop("quality", reason)
        elif stage == "pii":
            text, counts = scrub(text, cfg.pii)
            row.update({f"pii_{k}": v for k, v in counts.items()})
    row.update(status="kept", text=text, n_chars=len(text), n_bytes=len(text.encode("utf-8")),
               exact_hash=xxhash.xxh64_intdigest(dedup_key_text(text).encode("utf-8", "surrogatepass")))
    return row


def clean_records(records: list[dict], cfg: Any) -> pa.Table:
    """Clean every reader row, then MinHash all kept rows in one vectorised call."""
    rows = [clean_record(rec, cfg) for rec in records]
    kept = [r for r in rows if r["status"] == "kept"]
    if kept and cfg.dedup.fuzzy:
        shingles = [shingle_hashes(r["text"], r["lang"], cfg.dedup) for r in kept]
        sigs = signatures(shingles, int(cfg.dedup.num_perm), int(cfg.dedup.seed))
        bands = band_hashes(sigs, int(cfg.dedup.bands), int(cfg.dedup.rows))
        for r, s, b, sig in zip(kept, shingles, bands, sigs):
            if len(s):  # no shingles: nothing to compare, never a near duplicate
                r["bands"], r["signature"] = b.tolist(), sig.tolist()
    return pa.Table.from_pylist(rows, schema=STAGE1_SCHEMA)
