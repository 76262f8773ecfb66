"""Turn input files into records, and anything unreadable into quarantine rows.

A crawl always holds some garbage: truncated archives, half-written lines,
bytes in the wrong encoding. One bad line must never stop a run of millions,
so every reader yields either a record or a quarantine row (file, line,
error) and keeps going. The counts of both feed the report's invariant
``input = kept + heldout + dropped + quarantined``.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import xxhash

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


def expand_inputs(spec: Any, extensions: list[str]) -> list[InputFile]:
    """Resolve a path, glob, comma list or list of those into a sorted, de-duplicated file list.

    Sorting makes the file keys (and so resume and shard numbering) independent
    of the order the shell or the filesystem lists files in.
    """
    patterns: list[str] = []
    items = [spec] if isinstance(spec, str) else list(spec)
    for item in items:
        patterns.extend(p.strip() for p in str(item).split(",") if p.strip())
    paths: set[str] = set()
    for pattern in patterns:
        matches = glob.glob(os.path.expanduser(pattern), recursive=True)
        if not matches and os.path.exists(pattern):
            matches = [pattern]
        for match in matches:
            if os.path.isdir(match):
                for root, _, names in os.walk(match):
                    paths.update(os.path.join(root, n) for n in names if _has_extension(n, extensions))
            else:
                paths.add(match)
    files = []
    for index, path in enumerate(sorted(os.path.abspath(p) for p in paths)):
        digest = xxhash.xxh64_hexdigest(path.encode("utf-8", "surrogateescape"))[:8]
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in source_name(path))[:40]
        files.append(InputFile(path=path, key=f"{index:05d}-{stem}-{digest}", source=source_name(path)))
    return files


def _has_extension(name: str, extensions: list[str]) -> bool:
    return any(name.endswith(ext) for ext in extensions)


def stable_id(file_name: str, line: int, text: str) -> str:
    """Id for records that have none: same file, line and text give the same id on every run."""
    return xxhash.xxh64_hexdigest(f"{file_name}\0{line}\0{text}".encode("utf-8", "surrogatepass"))


def _open_binary(path: str) -> io.BufferedIOBase:
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".zst"):
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), read_across_frames=True,
                                                            closefd=True)
        return io.BufferedReader(reader)  # the raw zstd reader cannot iterate lines
    return open(path, "rb")


def _quarantine(path: str, line: int, error: str, raw: bytes = b"") -> dict:
    return {"kind": "quarantine", "file": path, "line": line, "error": error,
            "raw": raw[:200].decode("utf-8", "replace")}


def iter_records(path: str, read_cfg: Any, default_source: str) -> Iterator[dict]:
    """Yield {"kind": "record", id, text, source, lang_hint, line} or {"kind": "quarantine", ...}."""
    name = os.path.basename(path)
    if os.path.getsize(path) == 0:
        yield _quarantine(path, 0, "empty file")
        return
    if ".parquet" in name:
        yield from _iter_parquet(path, read_cfg, default_source)
    elif ".txt" in name:
        yield from _iter_text_file(path, default_source)
    else:
        yield from _iter_jsonl(path, read_cfg, default_source)


def _iter_jsonl(path: str, read_cfg: Any, default_source: str) -> Iterator[dict]:
    name = os.path.basename(path)
    line_no = 0
    seen_any = False
    try:
        with _open_binary(path) as fh:
            for line_no, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue  # blank lines are layout, not records
                seen_any = True
                yield _parse_json_line(raw, path, name, line_no, read_cfg, default_source)
    except (EOFError, OSError, zlib.error, ValueError) as exc:  # truncated or corrupt archive
        yield _quarantine(path, line_no + 1, f"unreadable stream after line {line_no}: {type(exc).__name__}: {exc}")
        return
    except Exception as exc:  # zstandard raises its own ZstdError
        yield _quarantine(path, line_no + 1, f"unreadable stream after line {line_no}: {type(exc).__name__}: {exc}")
        return
    if not seen_any:
        yield _quarantine(path, 0, "empty file (no records after decompression)")


def _parse_json_line(raw: bytes, path: str, name: str, line_no: int, read_cfg: Any, default_source: str) -> dict:
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _quarantine(path, line_no, f"undecodable bytes: {exc}", raw)
    try:
        obj = json.loads(decoded)
    except json.JSONDecodeError as exc:
        return _quarantine(path, line_no, f"bad JSON: {exc}", raw)
    if not isinstance(obj, dict):
        return _quarantine(path, line_no, f"bad JSON: expected an object, got {type(obj).__name__}", raw)
    return _record_from_mapping(obj, path, name, line_no, read_cfg, default_source, raw)


def _record_from_mapping(obj: dict, path: str, name: str, line_no: int, read_cfg: Any,
                         default_source: str, raw: bytes = b"") -> dict:
    text = obj.get(read_cfg.text_field)
    if not isinstance(text, str):
        what = "missing" if text is None else f"not a string ({type(text).__name__})"
        return _quarantine(path, line_no, f"text field '{read_cfg.text_field}' {what}", raw)
    raw_id = obj.get(read_cfg.id_field)
    doc_id = str(raw_id) if raw_id not in (None, "") else stable_id(name, line_no, text)
    source = obj.get(read_cfg.source_field) if read_cfg.source_field else None
    hint = obj.get(read_cfg.lang_hint_field) if read_cfg.lang_hint_field else None
    return {"kind": "record", "id": doc_id, "text": text, "line": line_no,
            "source": str(source) if source else default_source, "lang_hint": str(hint) if hint else ""}


def _iter_parquet(path: str, read_cfg: Any, default_source: str) -> Iterator[dict]:
    import pyarrow.parquet as pq

    name = os.path.basename(path)
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        yield _quarantine(path, 0, f"unreadable parquet: {type(exc).__name__}: {exc}")
        return
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=1024):
            for obj in batch.to_pylist():
                row += 1
                yield _record_from_mapping(obj, path, name, row, read_cfg, default_source)
    except Exception as exc:
        yield _quarantine(path, row + 1, f"unreadable parquet after row {row}: {type(exc).__name__}: {exc}")
        return
    if row == 0:
        yield _quarantine(path, 0, "empty file (parquet with no rows)")


def _iter_text_file(path: str, default_source: str) -> Iterator[dict]:
    """A plain-text file is one document: splitting it would cut documents at arbitrary lines."""
    name = os.path.basename(path)
    try:
        with _open_binary(path) as fh:
            data = fh.read()
    except Exception as exc:
        yield _quarantine(path, 1, f"unreadable stream: {type(exc).__name__}: {exc}")
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        yield _quarantine(path, 1, f"undecodable bytes: {exc}", data)
        return
    if not text.strip():
        yield _quarantine(path, 0, "empty file")
        return
    yield {"kind": "record", "id": stable_id(name, 1, text), "text": text, "line": 1,
           "source": default_source, "lang_hint": ""}
