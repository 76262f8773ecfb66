"""The committed test crawl (scripts/make_test_warc.py) and what its pages were built from."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CRAWL = Path(__file__).resolve().parent / "data" / "crawl"
WARC = CRAWL / "sample.warc.gz"
WET = CRAWL / "sample.warc.wet.gz"
BLOCKLIST = CRAWL / "blocklist"


def generator():
    """scripts/make_test_warc.py as a module: its page specs say what each record should become."""
    spec = importlib.util.spec_from_file_location("make_test_warc", REPO_ROOT / "scripts" / "make_test_warc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def expected() -> dict[str, str]:
    return json.loads((CRAWL / "expected.json").read_text(encoding="utf-8"))


READ_CFG = {"text_field": "text", "id_field": "id", "url_field": "url", "max_record_bytes": 1 << 26,
            "warc": {"extractor": "trafilatura"}}
