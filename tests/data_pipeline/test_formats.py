"""Explicitly named files are read by what they hold (magic bytes, first bytes), not only by their name."""

from __future__ import annotations

import gzip
import json

import pytest
import zstandard

from data_pipeline.formats import JSON_ARRAY, JSONL, PARQUET, TEXT, WARC, detect_format
from data_pipeline.readers import iter_records

from .crawl_data import WARC as WARC_FILE

CFG = {"text_field": "text", "id_field": "id", "url_field": "url", "max_record_bytes": 1 << 20}
LINES = "".join(json.dumps({"id": f"d{i}", "text": f"document {i}"}) + "\n" for i in range(3)).encode()


@pytest.mark.parametrize("name, payload, fmt", [
    ("data.bin", gzip.compress(LINES), JSONL),               # gzip told by magic, not by name
    ("data.jsonl", zstandard.ZstdCompressor().compress(LINES), JSONL),  # zstd under a plain name
    ("wudao.json", b'\n  [{"title": "t", "content": "c"}]', JSON_ARRAY),
    ("notes.txt", b'{"looks": "like json"}', TEXT),             # the .txt name wins over a JSON-looking start
    ("readme", b"Just some prose.\n", TEXT),
    ("crawl.warc.gz", WARC_FILE.read_bytes(), WARC),
    ("crawl.jsonl.gz", WARC_FILE.read_bytes(), WARC),            # a WARC misnamed as JSONL is still a WARC
])
def test_detect_format(tmp_path, name, payload, fmt):
    path = tmp_path / name
    path.write_bytes(payload)
    assert detect_format(str(path)) == fmt


def test_parquet_by_magic(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "part-0"
    pq.write_table(pa.table({"text": ["a parquet document"]}), path)
    assert detect_format(str(path)) == PARQUET
    assert [r["text"] for r in iter_records(str(path), CFG, "s")] == ["a parquet document"]


def test_misnamed_gzip_jsonl_reads_its_records(tmp_path):
    path = tmp_path / "dump-0001"
    path.write_bytes(gzip.compress(LINES))
    assert [r["id"] for r in iter_records(str(path), CFG, "s")] == ["d0", "d1", "d2"]


def test_text_file_is_streamed_and_decoded_across_piece_boundaries(tmp_path, monkeypatch):
    import data_pipeline.readers as readers

    monkeypatch.setattr(readers, "TEXT_CHUNK", 7)  # every 3-byte character straddles some piece boundary
    text = "汉字与English混排的文本。\n" * 20
    path = tmp_path / "doc.txt.gz"
    path.write_bytes(gzip.compress(text.encode("utf-8")))
    (rec,) = iter_records(str(path), CFG, "s")
    assert rec["kind"] == "record" and rec["text"] == text


def test_text_file_over_the_limit_is_quarantined_with_its_size(tmp_path):
    path = tmp_path / "huge.txt"
    path.write_bytes(b"x" * 5000)
    (rec,) = iter_records(str(path), {**CFG, "max_record_bytes": 1000}, "s")
    assert rec["kind"] == "quarantine" and rec["error"].startswith("record too large: over 1000 bytes (5000 bytes")


def test_text_file_with_bad_bytes_is_quarantined(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes("好".encode("utf-8") * 10 + b"\xff\xfe" + b"tail")
    (rec,) = iter_records(str(path), CFG, "s")
    assert rec["kind"] == "quarantine" and rec["error"].startswith("undecodable bytes")
