"""Per-source reading rules: WuDao JSON arrays read element by element, field names and metadata per source."""

from __future__ import annotations

import json
import tracemalloc

from data_pipeline.config import plain
from data_pipeline.readers import expand_inputs, iter_records
from data_pipeline.source_rules import record_fields

from .conftest import load_config

WUDAO_RULES = {"files": "*wudao*", "text_field": "content", "title_field": "title", "id_field": "uniqueKey",
               "meta_fields": ["dataType"]}


def _read_cfg(**sources):
    return plain(load_config(input="x", output="y", **{f"read.sources.{k}": v for k, v in sources.items()})).read


def test_wudao_array_is_read_record_by_record_with_title_joined(tmp_path):
    path = tmp_path / "wudao_part1.json"
    items = [{"id": i, "uniqueKey": f"wd{i}", "title": f"标题{i}", "content": f"正文内容{i}", "dataType": "百科"}
             for i in range(3)]
    path.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    (f,) = expand_inputs(str(path), [".json"], sources={"wudao": WUDAO_RULES})
    assert f.source == "wudao"
    rows = list(iter_records(str(path), _read_cfg(wudao=WUDAO_RULES), f.source))
    assert [(r["id"], r["text"], r["line"], r["source"]) for r in rows] == [
        (f"wd{i}", f"标题{i}\n\n正文内容{i}", i + 1, "wudao") for i in range(3)]
    assert json.loads(rows[0]["meta"]) == {"dataType": "百科"}


def test_a_large_json_array_is_never_held_whole(tmp_path):
    path = tmp_path / "wudao_big.json"
    body = "段落内容。" * 2000  # 30 KB per element, 600 elements: ~18 MB of file
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("[" + ",".join(json.dumps({"title": "t", "content": body + str(i)}, ensure_ascii=False)
                                for i in range(600)) + "]")
    tracemalloc.start()
    n = 0
    for row in iter_records(str(path), _read_cfg(wudao=WUDAO_RULES), "wudao"):
        n += row["kind"] == "record"
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n == 600 and peak < 4 << 20, peak  # a few elements' worth, not the file's 18 MB


def test_a_broken_array_keeps_the_elements_before_the_damage(tmp_path):
    path = tmp_path / "wudao_bad.json"
    path.write_text('[{"title": "a", "content": "one"}, 7, {"title": "b", "content": "two"}, {"title": ', encoding="utf-8")
    rows = list(iter_records(str(path), _read_cfg(wudao=WUDAO_RULES), "wudao"))
    assert [r["kind"] for r in rows] == ["record", "quarantine", "record", "quarantine"]
    assert "expected an object, got int" in rows[1]["error"]
    assert rows[3]["error"].startswith(("truncated archive after element 3", "bad JSON array after element 3"))


def test_culturax_source_field_does_not_rename_the_source(tmp_path):
    path = tmp_path / "culturax_zh.jsonl"
    rec = {"text": "内容", "url": "https://News.Example.com:8080/a?b=1", "timestamp": "2021/03/04 12:00:00",
           "source": "mC4"}
    path.write_text(json.dumps(rec, ensure_ascii=False) + "\n", encoding="utf-8")
    rules = {"files": "culturax_*", "meta_fields": ["timestamp", "source"]}
    (f,) = expand_inputs(str(path), [".jsonl"], sources={"culturax": rules})
    (row,) = iter_records(str(path), _read_cfg(culturax=rules), f.source)
    assert (row["source"], row["url"], row["domain"]) == ("culturax", rec["url"], "news.example.com")
    assert json.loads(row["meta"]) == {"source": "mC4", "timestamp": "2021/03/04 12:00:00"}
    # asked for, a record field still names the source
    (row,) = iter_records(str(path), {**_read_cfg(), "source_field": "source"}, "culturax_zh")
    assert row["source"] == "mC4"


def test_record_fields_reports_a_missing_text_field():
    assert record_fields({"title": "x"}, {"text_field": "content"}) == "text field 'content' missing"
    fields = record_fields({"content": "c", "title": "  "}, {"text_field": "content", "title_field": "title"})
    assert fields["text"] == "c" and fields["url"] is None and fields["meta"] is None


def test_fineweb_parquet_keeps_url_and_metadata(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "fineweb_000.parquet"
    pq.write_table(pa.table({"text": ["a page"], "id": ["<urn:uuid:1>"], "dump": ["CC-MAIN-2024-10"],
                             "url": ["https://www.Example.org/p"], "language": ["en"], "language_score": [0.93]}), path)
    rules = {"files": "*fineweb*", "meta_fields": ["dump", "language", "language_score"]}
    (f,) = expand_inputs(str(path), [".parquet"], sources={"fineweb": rules})
    (row,) = iter_records(str(path), _read_cfg(fineweb=rules), f.source)
    assert (row["source"], row["id"], row["domain"]) == ("fineweb", "<urn:uuid:1>", "example.org")
    assert json.loads(row["meta"]) == {"dump": "CC-MAIN-2024-10", "language": "en", "language_score": 0.93}
