"""HTML bytes to main text: the charset (declared or not), then main-content extraction.

Charset, in the order a browser trusts them (WHATWG): a byte-order mark, the
HTTP ``Content-Type`` charset, a ``<meta charset>`` / ``http-equiv`` tag in the
first 4 KiB, and only then detection from the bytes. A declared charset is
used only if the body decodes under it without error: Chinese sites often
declare ``gb2312`` and serve GBK or GB18030 characters, or declare nothing.
Labels map to the superset browsers really decode with (gb2312/gbk ->
gb18030, big5 -> cp950 then big5hkscs, latin-1 -> cp1252).

Extraction: Resiliparse's ``extract_plain_text(main_content=True)`` by default,
Trafilatura (``favor_precision``) on request (``read.warc.extractor``); see
docs/data_pipeline.md for the measurement behind the default.
"""

from __future__ import annotations

import codecs
import re

META_SNIFF_BYTES = 4096
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_:.\-]+)""", re.IGNORECASE)
_HEADER_CHARSET = re.compile(r"""charset\s*=\s*["']?\s*([A-Za-z0-9_:.\-]+)""", re.IGNORECASE)
# What the label says vs what pages labelled so actually hold (WHATWG Encoding Standard, plus Big5's
# Microsoft and Hong Kong extensions, tried in that order).
SUPERSETS = {"gb2312": ("gb18030",), "gbk": ("gb18030",), "x-gbk": ("gb18030",), "cp936": ("gb18030",),
             "gb_2312-80": ("gb18030",), "euc-cn": ("gb18030",), "gb18030": ("gb18030",),
             "big5": ("cp950", "big5hkscs"), "big5-hkscs": ("big5hkscs",), "x-x-big5": ("cp950", "big5hkscs"),
             "cp950": ("cp950", "big5hkscs"), "iso-8859-1": ("cp1252",), "latin1": ("cp1252",),
             "us-ascii": ("utf-8",), "ascii": ("utf-8",)}
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def charset_from_header(content_type: str | None) -> str | None:
    m = _HEADER_CHARSET.search(content_type or "")
    return m.group(1).lower() if m else None


def charset_from_meta(body: bytes) -> str | None:
    m = _META_CHARSET.search(body[:META_SNIFF_BYTES])
    return m.group(1).decode("ascii", "replace").lower() if m else None


def _codecs_for(label: str) -> tuple[str, ...]:
    if label in SUPERSETS:
        return SUPERSETS[label]
    try:
        return (codecs.lookup(label).name,)
    except LookupError:
        return ()


def decode_html(body: bytes, content_type: str | None = None) -> tuple[str, str]:
    """(text, how): ``how`` names the codec and where it came from (``gb18030 (meta)``, ``cp950 (detected)``).

    Undeclared bytes: UTF-8 if they decode strictly, else charset-normalizer's
    best guess (it tells GBK from Big5 by character frequencies), mapped to its
    superset; as a last resort UTF-8 with replacement characters, which the
    normalize stage then rejects as ``broken_encoding`` if there are many.
    """
    for bom, codec in _BOMS:
        if body.startswith(bom):
            return body.decode(codec, "replace"), f"{codec} (bom)"
    for where, label in (("header", charset_from_header(content_type)), ("meta", charset_from_meta(body))):
        for codec in _codecs_for(label) if label else ():
            try:
                return body.decode(codec), f"{codec} ({where})"
            except (UnicodeDecodeError, LookupError):
                continue
    try:
        return body.decode("utf-8"), "utf-8 (detected)"
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    best = from_bytes(body).best()
    if best is not None:
        for codec in _codecs_for(best.encoding.lower().replace("_", "-")) or (best.encoding,):
            try:
                return body.decode(codec), f"{codec} (detected)"
            except (UnicodeDecodeError, LookupError):
                continue
    return body.decode("utf-8", "replace"), "utf-8 (undetected, replaced)"


def extract_resiliparse(html: str) -> str:
    from resiliparse.extract.html2text import extract_plain_text

    return extract_plain_text(html, main_content=True, alt_texts=False, links=False, list_bullets=True,
                              form_fields=False, noscript=False)


def extract_trafilatura(html: str) -> str:
    import trafilatura

    return trafilatura.extract(html, favor_precision=True, include_comments=False, include_tables=True,
                               deduplicate=False, with_metadata=False) or ""


EXTRACTORS = {"resiliparse": extract_resiliparse, "trafilatura": extract_trafilatura}


def main_text(html: str, extractor: str = "resiliparse") -> str:
    """The page's main text, boilerplate (navigation, footers, cookie banners) removed; "" when there is none."""
    return (EXTRACTORS[extractor](html) or "").strip()
