"""Per-source reading rules: which fields of a record are its text, title, id, URL and kept metadata.

Corpora name the same things differently (FineWeb ``text``/``url``, WuDao
``title``/``content``/``uniqueKey``, CulturaX ``text``/``url``/``timestamp``),
and one run must read them all to deduplicate them together. ``read`` holds
the defaults; ``read.sources.<name>`` overrides any of them for the files its
``files`` glob matches, and names those files' source. The source name comes
from the config (or the file's stem), never from a record field unless
``source_field`` asks for it: a CulturaX record's ``source`` ("mC4", "OSCAR")
would otherwise rename the source and change the mixture's keys.
"""

from __future__ import annotations

import fnmatch
import json
import os
from typing import Any

from data_pipeline.urls import domain_of

RULE_KEYS = ("text_field", "title_field", "id_field", "url_field", "source_field", "lang_hint_field", "meta_fields",
             "max_record_bytes")


def source_for(path: str, sources: Any) -> str | None:
    """The name of the first ``read.sources`` entry whose ``files`` glob matches the path or its file name."""
    for name, rules in (sources or {}).items():
        pattern = str((rules or {}).get("files") or "")
        if pattern and (fnmatch.fnmatch(os.path.basename(path), pattern) or fnmatch.fnmatch(path, pattern)):
            return str(name)
    return None


def rules_for(read_cfg: Any, source: str) -> Any:
    """``read`` with the keys of ``read.sources[source]`` laid over it (the same object when there are none)."""
    override = (read_cfg.get("sources") or {}).get(source)
    if not override:
        return read_cfg
    merged = type(read_cfg)(read_cfg) if isinstance(read_cfg, dict) else dict(read_cfg)
    merged.update({k: v for k, v in override.items() if k != "files"})
    return merged


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def record_fields(obj: dict, rules: Any) -> dict | str:
    """{text, url, domain, lang_hint, meta, raw_id, record_source} of one mapping, or the reason it has no text.

    With ``title_field`` set, a non-empty title is joined to the text by a blank
    line (WuDao: the title is often the only statement of the topic). ``meta``
    is a JSON object of the ``meta_fields`` present, or None.
    """
    field = rules.get("text_field") or "text"
    text = obj.get(field)
    if not isinstance(text, str):
        what = "missing" if text is None else f"not a string ({type(text).__name__})"
        return f"text field '{field}' {what}"
    title_field = rules.get("title_field")
    title = _text(obj.get(title_field)) if title_field else None
    if title and title.strip():
        text = f"{title.strip()}\n\n{text}"
    url_field = rules.get("url_field")
    url = _text(obj.get(url_field)) if url_field else None
    hint_field = rules.get("lang_hint_field")
    hint = obj.get(hint_field) if hint_field else None
    source_field = rules.get("source_field")
    meta = {k: obj[k] for k in (rules.get("meta_fields") or []) if k in obj}
    return {"text": text, "url": url or None, "domain": domain_of(url) if url else None,
            "lang_hint": str(hint) if hint else "",
            "meta": json.dumps(meta, ensure_ascii=False, sort_keys=True, default=str) if meta else None,
            "raw_id": obj.get(rules.get("id_field") or "id"),
            "record_source": obj.get(source_field) if source_field else None}
