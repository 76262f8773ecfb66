"""Turn input files into records, and anything unreadable into quarantine rows.

A crawl always holds some garbage: truncated archives, half-written lines,
bytes in the wrong encoding. One bad line must never stop a run of millions,
so every reader yields either a record or a quarantine row (file, line,
error) and keeps going. The counts of both feed the report's invariant
``input = kept + heldout + dropped + quarantined``.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import xxhash

from data_pipeline.formats import JSON_ARRAY, PARQUET, TEXT, WARC, detect_format, open_decompressed
from data_pipeline.read_errors import MAX_RECORD_BYTES, quarantine_row, stream_error
from data_pipeline.source_rules import record_fields, rules_for, source_for

COMPRESSED = (".gz", ".zst")


@dataclass(frozen=True)
class InputFile:
    """One input file and the key its stage-1 output is stored under."""

    path: str
    key: str  # filesystem-safe, unique per path: "<index>-<stem>-<hash8>"
    source: str  # default source name: the file's stem without extensions


def source_name(path: str) -> str:
    """en_docs.jsonl.gz -> en_docs: the name a corpus file is usually known by."""
    return Path(path).name.split(".")[0]


def expand_inputs(spec: Any, extensions: list[str], skipped: list[dict] | None = None,
                  sources: Any = None) -> list[InputFile]:
    """Resolve a path, glob, comma list or list of those into a sorted, de-duplicated file list.

    Sorting makes the file keys (and so resume and shard numbering) independent
    of the order the shell or the filesystem lists files in. Every file found in
    a directory input is either returned or appended to ``skipped`` as
    ``{"path", "reason"}`` (the report lists them): a format the readers do not
    know, or a subdirectory that cannot be listed, is never passed over in silence;
    nor is a pattern that matches nothing.
    Extensions match whatever their case (``F.JSONL`` is read).
    A file matched by one of ``sources`` (``read.sources``: ``{name: {files: glob}}``)
    is known by that name; any other by its stem.
    """
    skipped = [] if skipped is None else skipped

    def unlistable(exc: OSError) -> None:
        skipped.append({"path": os.path.abspath(exc.filename or ""),
                        "reason": f"directory not listable: {type(exc).__name__}: {exc.strerror or exc}"})

    patterns: list[str] = []
    items = [spec] if isinstance(spec, str) else list(spec)
    for item in items:
        patterns.extend(p.strip() for p in str(item).split(",") if p.strip())
    paths: set[str] = set()
    for pattern in patterns:
        matches = glob.glob(os.path.expanduser(pattern), recursive=True)
        if not matches and os.path.exists(pattern):
            matches = [pattern]
        if not matches:  # one entry of a list that matches nothing must not vanish unnoticed
            skipped.append({"path": pattern, "reason": "no file matches this input pattern"})
        for match in matches:
            if os.path.isdir(match):
                for root, _, names in os.walk(match, onerror=unlistable):
                    for n in names:
                        if _has_extension(n, extensions):
                            paths.add(os.path.join(root, n))
                        else:
                            skipped.append({"path": os.path.abspath(os.path.join(root, n)),
                                            "reason": _skip_reason(n, extensions)})
            else:
                paths.add(match)
    files = []
    for index, path in enumerate(sorted(os.path.abspath(p) for p in paths)):
        digest = xxhash.xxh64_hexdigest(path.encode("utf-8", "surrogateescape"))[:8]
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in source_name(path))[:40]
        files.append(InputFile(path=path, key=f"{index:05d}-{stem}-{digest}",
                               source=source_for(path, sources) or source_name(path)))
    return files


def _has_extension(name: str, extensions: list[str]) -> bool:
    lower = name.lower()
    return any(lower.endswith(ext.lower()) for ext in extensions)


def _skip_reason(name: str, extensions: list[str]) -> str:
    known = ", ".join(extensions)
    if "." not in name.strip("."):
        return f"no known extension (read.extensions: {known})"
    return f"unsupported extension '{Path(name).suffix}' (read.extensions: {known})"


def stable_id(file_name: str, line: int, text: str) -> str:
    """Id for records that have none: same file, line and text give the same id on every run."""
    return xxhash.xxh64_hexdigest(f"{file_name}\0{line}\0{text}".encode("utf-8", "surrogatepass"))


def _open_binary(path: str) -> io.BufferedIOBase:
    """Decompressed bytes; gzip or zstd is told by the magic bytes, so a misnamed archive still reads."""
    return open_decompressed(path)


def iter_records(path: str, read_cfg: Any, default_source: str) -> Iterator[dict]:
    """Yield {"kind": "record", id, text, source, lang_hint, url, domain, meta, line}, {"kind": "quarantine", ...}
    or {"kind": "drop", reason, ...} (a WARC record that is not a document, counted with its reason).

    The format comes from the file's first bytes and its name (``formats.detect_format``), so an
    explicitly named ``.warc.gz`` or WuDao ``.json`` array is read as what it is. The reading rules
    (field names, metadata to keep) are those of the file's source (``read.sources``) over ``read``.
    """
    read_cfg = rules_for(read_cfg, default_source)
    try:
        size = os.path.getsize(path)  # follows links: a loop, a dangling link or a vanished file fails here
    except OSError as exc:
        yield quarantine_row(path, 0, f"unreadable file: {type(exc).__name__}: {exc.strerror or exc}")
        return
    if not os.path.isfile(path):
        yield quarantine_row(path, 0, "unreadable file: not a regular file")
        return
    if size == 0:
        yield quarantine_row(path, 0, "empty file")
        return
    try:
        fmt = detect_format(path)
    except OSError as exc:
        yield quarantine_row(path, 0, f"unreadable file: {type(exc).__name__}: {exc.strerror or exc}")
        return
    if fmt == PARQUET:
        yield from _iter_parquet(path, read_cfg, default_source)
    elif fmt == WARC:
        from data_pipeline.warc import iter_warc

        yield from iter_warc(path, read_cfg, default_source)
    elif fmt == JSON_ARRAY:
        yield from _iter_json_array(path, read_cfg, default_source)
    elif fmt == TEXT:
        yield from _iter_text_file(path, read_cfg, default_source)
    else:
        yield from _iter_jsonl(path, read_cfg, default_source)


def _iter_jsonl(path: str, read_cfg: Any, default_source: str) -> Iterator[dict]:
    name = os.path.basename(path)
    limit = int(read_cfg.get("max_record_bytes") or MAX_RECORD_BYTES)
    line_no = 0
    seen_any = False
    try:
        with _open_binary(path) as fh:
            while raw := fh.readline(limit + 1):
                line_no += 1
                if len(raw) > limit and not raw.endswith(b"\n"):  # longer than the limit: skip to its end
                    seen_any = True
                    yield quarantine_row(path, line_no, f"record too large: over {limit} bytes "
                                      f"({_skip_line(fh) + len(raw)} bytes; read.max_record_bytes)", raw)
                    continue
                if not raw.strip():
                    continue  # blank lines are layout, not records
                seen_any = True
                try:
                    row = _parse_json_line(raw, path, name, line_no, read_cfg, default_source)
                except Exception as exc:  # RecursionError (deep nesting), MemoryError...: this record only
                    row = quarantine_row(path, line_no, f"unparseable record: {type(exc).__name__}: {exc}", raw)
                yield row
    except Exception as exc:  # the stream itself broke (truncated, corrupt, I/O error): no later line is reachable
        yield quarantine_row(path, line_no + 1, f"{stream_error(exc)} after line {line_no}")
        return
    if not seen_any:
        yield quarantine_row(path, 0, "empty file (no records after decompression)")


# A \uD800-\uDFFF escape: json.loads turns an unpaired one into a lone surrogate, a str that no UTF-8
# writer (pyarrow included) accepts. Raw UTF-8 cannot hold one (strict decoding rejects it), so only
# lines with such an escape need checking.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def _skip_line(fh: Any) -> int:
    """Read past the rest of an oversized line, a bounded piece at a time; return the bytes skipped."""
    skipped = 0
    while piece := fh.readline(1 << 20):
        skipped += len(piece)
        if piece.endswith(b"\n"):
            break
    return skipped


def _parse_json_line(raw: bytes, path: str, name: str, line_no: int, read_cfg: Any, default_source: str) -> dict:
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return quarantine_row(path, line_no, f"undecodable bytes: {exc}", raw)
    try:
        obj = json.loads(decoded)
    except json.JSONDecodeError as exc:
        return quarantine_row(path, line_no, f"bad JSON: {exc}", raw)
    if not isinstance(obj, dict):
        return quarantine_row(path, line_no, f"bad JSON: expected an object, got {type(obj).__name__}", raw)
    rec = _record_from_mapping(obj, path, name, line_no, read_cfg, default_source, raw)
    if rec["kind"] == "record" and _SURROGATE_ESCAPE.search(raw):  # rare: only then pay for the check
        for field in ("text", "id", "source", "lang_hint", "url", "meta"):
            try:
                (rec.get(field) or "").encode("utf-8")
            except UnicodeEncodeError as exc:
                return quarantine_row(path, line_no, f"undecodable text: lone surrogate escape in '{field}' ({exc})", raw)
    return rec


def _record_from_mapping(obj: dict, path: str, name: str, line_no: int, read_cfg: Any,
                         default_source: str, raw: bytes = b"") -> dict:
    fields = record_fields(obj, read_cfg)
    if isinstance(fields, str):
        return quarantine_row(path, line_no, fields, raw)
    text = fields["text"]
    raw_id = fields.pop("raw_id")
    doc_id = str(raw_id) if raw_id not in (None, "") else stable_id(name, line_no, text)
    source = fields.pop("record_source")
    return {"kind": "record", "id": doc_id, "line": line_no, "source": str(source) if source else default_source,
            **fields}


def _iter_parquet(path: str, read_cfg: Any, default_source: str) -> Iterator[dict]:
    import pyarrow.parquet as pq

    name = os.path.basename(path)
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        yield quarantine_row(path, 0, f"unreadable parquet: {type(exc).__name__}: {exc}")
        return
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=1024):
            for obj in batch.to_pylist():
                row += 1
                try:
                    rec = _record_from_mapping(obj, path, name, row, read_cfg, default_source)
                except Exception as exc:  # one odd row (e.g. an id whose str() fails) costs that row only
                    rec = quarantine_row(path, row, f"unparseable record: {type(exc).__name__}: {exc}")
                yield rec
    except Exception as exc:
        yield quarantine_row(path, row + 1, f"unreadable parquet after row {row}: {type(exc).__name__}: {exc}")
        return
    if row == 0:
        yield quarantine_row(path, 0, "empty file (parquet with no rows)")


TEXT_CHUNK = 1 << 20  # bytes decoded at a time: a text file is never held as bytes and str at once


def _iter_text_file(path: str, read_cfg: Any, default_source: str) -> Iterator[dict]:
    """A plain-text file is one document: splitting it would cut documents at arbitrary lines.

    Read in 1 MiB pieces through an incremental UTF-8 decoder; a file whose text
    passes ``read.max_record_bytes`` is quarantined as ``record too large`` after
    being read past piece by piece, as an oversized JSON line is, never held whole.
    """
    import codecs

    name = os.path.basename(path)
    limit = int(read_cfg.get("max_record_bytes") or MAX_RECORD_BYTES)
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    parts: list[str] = []
    total = 0
    head = b""
    try:
        with _open_binary(path) as fh:
            while chunk := fh.read(TEXT_CHUNK):
                if not head:
                    head = chunk[:200]
                total += len(chunk)
                if total > limit:
                    parts = []
                    continue  # keep reading: the report gives the real size
                try:
                    parts.append(decoder.decode(chunk))
                except UnicodeDecodeError as exc:
                    yield quarantine_row(path, 1, f"undecodable bytes: {exc} (in the piece at byte {total - len(chunk)})",
                                      chunk[max(0, exc.start - 20):exc.start + 180])
                    return
            if total <= limit:
                parts.append(decoder.decode(b"", final=True))
    except UnicodeDecodeError as exc:  # a multi-byte character cut by the end of the file
        yield quarantine_row(path, 1, f"undecodable bytes: {exc} (at the end of the file)")
        return
    except Exception as exc:
        yield quarantine_row(path, 1, stream_error(exc))
        return
    if total > limit:
        yield quarantine_row(path, 1, f"record too large: over {limit} bytes ({total} bytes; read.max_record_bytes)", head)
        return
    text = "".join(parts)
    if not text.strip():
        yield quarantine_row(path, 0, "empty file")
        return
    yield {"kind": "record", "id": stable_id(name, 1, text), "text": text, "line": 1,
           "source": default_source, "lang_hint": "", "url": None, "domain": None, "meta": None}


def _iter_json_array(path: str, read_cfg: Any, default_source: str) -> Iterator[dict]:
    """A file holding one JSON array of records (WuDao 2.0): read element by element with ijson.

    ijson parses incrementally, so a multi-GB array costs the memory of one
    element, not of the file. ``line`` is the element's 1-based position. Malformed
    JSON ends the array (no later element can be located), as a truncated
    archive ends a JSONL file: one quarantine row says after which element.
    """
    import ijson

    name = os.path.basename(path)
    index = 0
    try:
        with _open_binary(path) as fh:
            for obj in ijson.items(fh, "item", use_float=True):
                index += 1
                if not isinstance(obj, dict):
                    yield quarantine_row(path, index, f"bad JSON: expected an object, got {type(obj).__name__}",
                                      json.dumps(obj, ensure_ascii=False)[:200].encode("utf-8"))
                    continue
                try:
                    rec = _record_from_mapping(obj, path, name, index, read_cfg, default_source)
                except Exception as exc:
                    rec = quarantine_row(path, index, f"unparseable record: {type(exc).__name__}: {exc}")
                if rec["kind"] == "quarantine" and not rec["raw"]:
                    rec["raw"] = json.dumps(obj, ensure_ascii=False)[:200]
                yield rec
    except ijson.common.IncompleteJSONError as exc:
        what = "truncated archive" if "incomplete" in str(exc).lower() else "bad JSON array"
        yield quarantine_row(path, index + 1, f"{what} after element {index}: {exc}")
        return
    except Exception as exc:
        yield quarantine_row(path, index + 1, f"{stream_error(exc)} after element {index}")
        return
    if index == 0:
        yield quarantine_row(path, 0, "empty file (a JSON array with no elements)")
