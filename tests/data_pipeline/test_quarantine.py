"""Malformed input goes to quarantine.jsonl with file, line and error; the run never stops."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from data_pipeline.pipeline import run
from data_pipeline.readers import iter_records

from .conftest import load_config, output_rows, read_corpus


def _good(n, start=0, lang_file="en_docs"):
    return [{"id": r["id"], "text": r["text"]} for r in read_corpus(lang_file)[start:start + n]]


def _jsonl(records):
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def _build_bad_inputs(root):
    root.mkdir()
    good = _good(12)
    # truncated gzip: 4 good lines survive before the cut, then the stream breaks
    full = gzip.compress(_jsonl(good[:4]) + _jsonl(_good(40, 20)), mtime=0)
    (root / "truncated.jsonl.gz").write_bytes(full[: len(full) // 2])
    lines = [json.dumps(good[4]), '{"id": "bad-json", "text": "unterminated', json.dumps({"id": "no-text", "body": "x"}),
             json.dumps(good[5])]
    (root / "mixed.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "empty.jsonl").write_bytes(b"")
    (root / "latin1.jsonl").write_bytes(_jsonl([good[6]]) + b'{"id": "bytes", "text": "caf\xe9 cr\xe8me"}\n')
    (root / "ok.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(_jsonl(good[7:9])))
    pq.write_table(pa.table({"text": [good[9]["text"], good[10]["text"]]}), root / "table.parquet")  # no id column
    (root / "note.txt").write_text(good[11]["text"], encoding="utf-8")


def test_readers_report_each_problem(tmp_path):
    _build_bad_inputs(tmp_path / "in")
    cfg = load_config(input="x", output="y")
    rows = {name: list(iter_records(str(tmp_path / "in" / name), cfg.read, "s"))
            for name in ("truncated.jsonl.gz", "mixed.jsonl", "empty.jsonl", "latin1.jsonl", "ok.jsonl.zst",
                         "table.parquet", "note.txt")}
    kinds = {name: [r["kind"] for r in recs] for name, recs in rows.items()}
    assert kinds["empty.jsonl"] == ["quarantine"]
    assert kinds["mixed.jsonl"] == ["record", "quarantine", "quarantine", "record"]
    assert [r["line"] for r in rows["mixed.jsonl"]] == [1, 2, 3, 4]
    assert "bad JSON" in rows["mixed.jsonl"][1]["error"] and "missing" in rows["mixed.jsonl"][2]["error"]
    assert kinds["latin1.jsonl"] == ["record", "quarantine"] and "undecodable" in rows["latin1.jsonl"][1]["error"]
    assert kinds["truncated.jsonl.gz"][-1] == "quarantine" and kinds["truncated.jsonl.gz"].count("record") >= 4
    assert kinds["ok.jsonl.zst"] == ["record", "record"]
    parquet_ids = [r["id"] for r in rows["table.parquet"]]
    assert len(set(parquet_ids)) == 2 and parquet_ids == [r["id"] for r in iter_records(
        str(tmp_path / "in" / "table.parquet"), cfg.read, "s")]  # stable ids for records without one
    assert kinds["note.txt"] == ["record"]


def test_pipeline_quarantines_and_keeps_going(ray_cluster, tmp_path):
    _build_bad_inputs(tmp_path / "in")
    out = tmp_path / "out"
    summary = run(load_config(input=str(tmp_path / "in"), output=str(out), **{"heldout.fraction": 0.0}))
    quarantine = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    by_file = {}
    for q in quarantine:
        by_file.setdefault(q["file"].rsplit("/", 1)[1], []).append(q)
    assert set(by_file) == {"truncated.jsonl.gz", "mixed.jsonl", "empty.jsonl", "latin1.jsonl"}
    assert [q["line"] for q in by_file["mixed.jsonl"]] == [2, 3]
    assert by_file["empty.jsonl"][0]["error"].startswith("empty file")
    assert summary["quarantined"] == len(quarantine) == 5
    report = json.loads((out / "report.json").read_text())
    assert report["input"] == report["kept"] + report["heldout"] + report["dropped_total"] + report["quarantined"]
    kept = output_rows(out, "shards")
    sources = {r["source"] for r in kept}
    assert {"mixed", "ok", "table", "note", "latin1"} <= sources  # good records of bad files are kept
