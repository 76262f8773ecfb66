"""Common Crawl WARC and WET files: one reader row per WARC record, each a document or a counted drop.

A WARC holds far more than documents: the ``warcinfo`` header, ``request`` and
``metadata`` records beside each ``response``, redirects, error pages, PDFs and
images, and bodies cut off at the crawler's size limit (``WARC-Truncated``).
Each of these leaves as a ``drop`` row with stage ``warc`` and a reason
(``warc_request_record``, ``http_404``, ``not_html``, ``truncated``,
``no_main_text``...), so the report accounts for every record of the file.
An HTTP 200 HTML response is decoded (html_text.decode_html) and reduced to its
main text (html_text.main_text); a WET ``conversion`` record is already text.

The ``id`` of a document is its ``WARC-Record-ID``, ``line`` its position in
the file (1-based), ``url``/``domain`` come from ``WARC-Target-URI``, and
``meta`` keeps the crawl date, the HTTP content type and how the charset was
found. The file is read through ``formats.open_decompressed``, so a gzip cut
short is a ``truncated archive`` quarantine row after the last whole record,
as for JSONL.
"""

from __future__ import annotations

import json
import re
import zlib
from typing import Any, Iterator

from data_pipeline.formats import open_decompressed
from data_pipeline.html_text import main_text
from data_pipeline.read_errors import MAX_RECORD_BYTES, quarantine_row, stream_error
from data_pipeline.urls import domain_of

HTML_TYPES = ("text/html", "application/xhtml+xml")
# <html lang="zh-CN">: what the page says of itself, kept as lang_hint (language id never trusts it)
_HTML_LANG = re.compile(r"""<html[^>]*?\slang\s*=\s*["']?([A-Za-z]{2,3})\b""", re.IGNORECASE)
STAGE = "warc"
EXAMPLE_BYTES = 200


def _drop(base: dict, reason: str, detail: str) -> dict:
    return {**base, "kind": "drop", "stage": STAGE, "reason": reason, "text": detail[:EXAMPLE_BYTES]}


def _mime(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _read_body(stream: Any, limit: int) -> bytes | None:
    """The payload, or None when it is longer than ``limit`` (read past in bounded pieces, never held whole)."""
    body = stream.read(limit + 1)
    if len(body) <= limit:
        return body
    while stream.read(1 << 20):
        pass
    return None


def _record_row(rec: Any, index: int, source: str, extractor: str, limit: int) -> dict:
    """The reader row of one WARC record."""
    from data_pipeline.html_text import decode_html

    headers = rec.rec_headers
    rec_type = rec.rec_type or "unknown"
    url = headers.get_header("WARC-Target-URI") or None
    base = {"id": headers.get_header("WARC-Record-ID") or f"record-{index}", "line": index, "source": source,
            "lang_hint": "", "url": url, "domain": domain_of(url) if url else None, "meta": None}
    where = url or rec_type
    if rec_type not in ("response", "conversion"):
        return _drop(base, f"warc_{rec_type}_record", f"{rec_type} {where}")
    if headers.get_header("WARC-Truncated"):
        return _drop(base, "truncated", f"WARC-Truncated: {headers.get_header('WARC-Truncated')} {where}")
    meta: dict[str, str] = {"warc_date": headers.get_header("WARC-Date") or ""}
    if rec_type == "conversion":  # WET: Common Crawl's own text extraction
        body = _read_body(rec.content_stream(), limit)
        if body is None:
            return _drop(base, "record_too_large", f"over {limit} bytes {where}")
        text = body.decode("utf-8", "replace").strip()
        if not text:
            return _drop(base, "empty_text", where)
        return {**base, "kind": "record", "text": text, "meta": json.dumps(meta, sort_keys=True)}
    http = rec.http_headers
    if http is None:
        return _drop(base, "no_http_headers", where)
    status = http.get_statuscode() or "?"
    if status != "200":
        return _drop(base, f"http_{status}", f"{http.statusline} {where}")
    content_type = http.get_header("Content-Type")
    # Common Crawl sniffs the payload type (WARC-Identified-Payload-Type): servers label PDFs text/html
    mime = _mime(headers.get_header("WARC-Identified-Payload-Type") or content_type)
    if mime not in HTML_TYPES:
        return _drop(base, "not_html", f"{mime or 'no content type'} {where}")
    body = _read_body(rec.content_stream(), limit)
    if body is None:
        return _drop(base, "record_too_large", f"over {limit} bytes {where}")
    html, charset = decode_html(body, content_type)
    text = main_text(html, extractor)
    if not text:
        return _drop(base, "no_main_text", where)
    meta.update(content_type=content_type or "", charset=charset)
    declared = _HTML_LANG.search(html[:4096])
    base["lang_hint"] = declared.group(1).lower() if declared else ""
    return {**base, "kind": "record", "text": text, "meta": json.dumps(meta, ensure_ascii=False, sort_keys=True)}


def iter_warc(path: str, read_cfg: Any, default_source: str) -> Iterator[dict]:
    """Every record of a WARC or WET file as a reader row (record, drop or quarantine)."""
    from warcio.archiveiterator import ArchiveIterator


    warc_cfg = read_cfg.get("warc") or {}
    extractor = str(warc_cfg.get("extractor") or "trafilatura")
    limit = int(read_cfg.get("max_record_bytes") or MAX_RECORD_BYTES)
    index = done = 0  # records started, records read whole
    try:
        with open_decompressed(path) as fh:
            for rec in ArchiveIterator(fh, arc2warc=True):
                index += 1
                try:
                    row = _record_row(rec, index, default_source, extractor, limit)
                except (EOFError, OSError, zlib.error):
                    raise  # the stream itself broke inside this record: nothing after it is reachable
                except Exception as exc:  # a broken record (bad HTTP headers, a decoder error) costs itself only
                    row = quarantine_row(path, index, f"unparseable WARC record: {type(exc).__name__}: {exc}")
                yield row
                done = index
    except Exception as exc:
        yield quarantine_row(path, done + 1, f"{stream_error(exc)} after WARC record {done}")
        return
    if index == 0:
        yield quarantine_row(path, 0, "empty file (no WARC records)")
