"""Texts out of jsonl / jsonl.gz files, for the training tools."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator


def read_texts(paths: list[str], text_field: str = "text") -> Iterator[str]:
    """The ``text_field`` of every parseable record with a non-empty string there (other lines skipped)."""
    for path in paths:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                try:
                    value = json.loads(line).get(text_field)
                except (json.JSONDecodeError, AttributeError):
                    continue
                if isinstance(value, str) and value.strip():
                    yield value
