"""The rows a reader yields for what it cannot read, and how the damage is named.

Shared by every input format's reader (JSONL, text, parquet, JSON arrays in
:mod:`data_pipeline.readers`; WARC/WET in :mod:`data_pipeline.warc`) and by the
report, which lists whole-file problems per file.
"""

from __future__ import annotations

import gzip
import zlib


def stream_error(exc: BaseException) -> str:
    """Name the damage: a compressed stream cut short, one with bad bytes, or a file the OS will not read."""
    what = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, EOFError):
        return f"truncated archive ({what})"
    if isinstance(exc, (zlib.error, gzip.BadGzipFile)) or type(exc).__module__.startswith("zstandard"):
        return f"corrupt archive ({what})"
    return f"unreadable stream ({what})"


# A JSON line longer than this (``read.max_record_bytes`` overrides it) is quarantined without being
# parsed or held whole: a runaway line (a file with no newlines, a base64 blob) must not exhaust a worker.
MAX_RECORD_BYTES = 64 << 20

# Errors that concern a whole file, or all of it from some line on, rather than one record: the report
# lists these per file (``file_problems``) besides counting them with the other quarantine rows.
FILE_PROBLEMS = ("unreadable file", "empty file", "truncated archive", "corrupt archive", "unreadable stream",
                 "unreadable parquet", "bad JSON array", "unreadable warc")


def is_file_problem(error: str | None) -> bool:
    return bool(error) and error.startswith(FILE_PROBLEMS)


def quarantine_row(path: str, line: int, error: str, raw: bytes = b"") -> dict:
    return {"kind": "quarantine", "file": path, "line": line, "error": error,
            "raw": raw[:200].decode("utf-8", "replace")}
