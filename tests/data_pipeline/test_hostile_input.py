"""Hostile input: nothing lost, nothing silently wrong.

Each test here reproduces one way a real crawl breaks a naive pipeline (ids repeated across files, a
line nested 10,000 levels deep, a symlink loop, a file with an upper-case or unknown extension, a
truncated archive) and checks that every input record is either kept or counted with its reason.
"""

import gzip
import json
import os
import sys

import pytest
import zstandard

from data_pipeline.pipeline import run
from data_pipeline.readers import iter_records

from .conftest import load_config, output_rows, read_corpus


def _texts(n, start=0):
    return [r["text"] for r in read_corpus("en_docs")[start:start + n]]


def _jsonl(records):
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def _assert_totals_add_up(report):
    dropped = sum(e["count"] for reasons in report["dropped"].values() for e in reasons.values())
    assert report["dropped_total"] == dropped
    assert report["input"] == report["kept"] + report["heldout"] + report["dropped_total"] + report["quarantined"]


def test_duplicate_input_ids_across_files_do_not_steer_dedup(ray_cluster, tmp_path):
    a, b, c, d = _texts(4)
    root = tmp_path / "in"
    root.mkdir()
    # X: the same id and text in two files (one copy must go). Y: a unique text in a.jsonl, and in
    # b.jsonl a copy of W's text under id Y (that copy must go; a.jsonl's Y must stay).
    (root / "a.jsonl").write_bytes(_jsonl([{"id": "X", "text": a}, {"id": "Y", "text": b}]))
    (root / "b.jsonl").write_bytes(_jsonl([{"id": "X", "text": a}, {"id": "W", "text": c}, {"id": "Y", "text": c},
                                           {"id": "V", "text": d}]))
    out = tmp_path / "out"
    run(load_config(input=str(root), output=str(out), **{"heldout.fraction": 0.0}))
    report = json.loads((out / "report.json").read_text())
    _assert_totals_add_up(report)
    kept = output_rows(out, "shards")
    assert sorted(r["text"] for r in kept) == sorted([a, b, c, d])  # each distinct text exactly once
    assert report["dropped"]["dedup"]["exact_duplicate"]["count"] == 2
    by_text = {r["text"]: r for r in kept}
    assert by_text[b]["id"] == "Y" and by_text[a]["id"] == "X"  # the input id stays, as a column
    assert len({r["doc_id"] for r in kept}) == len(kept)  # the pipeline's own id is unique
    assert report["input_ids"]["repeated"] == 2 and report["input_ids"]["records"] == 4
    assert sorted(report["input_ids"]["examples"]) == ["X", "Y"]


def test_an_unparseable_record_is_quarantined_at_its_line_and_reading_goes_on(tmp_path):
    t1, t2 = _texts(2)
    deep = "[" * 10000 + "]" * 10000
    path = tmp_path / "deep.jsonl"
    path.write_text(json.dumps({"id": "1", "text": t1}) + "\n" + deep + "\n" + '{"text": ' + deep + "}\n"
                    + json.dumps({"id": "4", "text": t2}) + "\n", encoding="utf-8")
    rows = list(iter_records(str(path), load_config(input="x", output="y").read, "s"))
    assert [(r["kind"], r["line"]) for r in rows] == [("record", 1), ("quarantine", 2), ("quarantine", 3),
                                                     ("record", 4)]
    assert "RecursionError" in rows[1]["error"]


def test_a_path_that_cannot_be_opened_is_quarantined_not_fatal(tmp_path):
    cfg = load_config(input="x", output="y")
    rows = list(iter_records(str(tmp_path / "vanished.jsonl"), cfg.read, "s"))
    assert [r["kind"] for r in rows] == ["quarantine"]
    assert "unreadable file" in rows[0]["error"] and "FileNotFoundError" in rows[0]["error"]


def test_every_file_of_a_directory_is_read_or_reported(ray_cluster, tmp_path):
    texts = _texts(4)
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / "good.jsonl").write_bytes(_jsonl([{"id": "g", "text": texts[0]}]))
    (root / "UPPER.JSONL").write_bytes(_jsonl([{"id": "u", "text": texts[1]}]))
    (root / "sub" / "Zipped.JSONL.GZ").write_bytes(gzip.compress(_jsonl([{"id": "z", "text": texts[2]}]), mtime=0))
    (root / "old.jsonl.bz2").write_bytes(b"BZh9")
    (root / "README").write_text("not data\n")
    os.symlink(root / "loop.jsonl", root / "loop.jsonl")  # a symlink loop
    os.symlink(root / "gone.jsonl", root / "dangling.jsonl")  # points nowhere
    out = tmp_path / "out"
    run(load_config(input=str(root), output=str(out), **{"heldout.fraction": 0.0}))
    report = json.loads((out / "report.json").read_text())
    _assert_totals_add_up(report)
    assert sorted(r["id"] for r in output_rows(out, "shards")) == ["g", "u", "z"]
    skipped = {os.path.basename(s["path"]): s["reason"] for s in report["skipped_files"]}
    assert set(skipped) == {"old.jsonl.bz2", "README"}
    assert "unsupported" in skipped["old.jsonl.bz2"] and "no known extension" in skipped["README"]
    quarantine = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    bad = {os.path.basename(q["file"]): q["error"] for q in quarantine}
    assert set(bad) == {"loop.jsonl", "dangling.jsonl"}
    assert all(e.startswith("unreadable file") for e in bad.values())
    assert report["quarantined"] == 2
    problems = {os.path.basename(p["file"]): p["error"] for p in report["file_problems"]}
    assert problems == bad
    md = (out / "report.md").read_text()
    assert "README" in md and "loop.jsonl" in md


def _damaged(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return list(iter_records(str(path), load_config(input="x", output="y").read, "s"))


def test_a_truncated_or_corrupt_archive_is_reported_as_such(tmp_path):
    texts = _texts(60)
    payload = _jsonl([{"id": str(i), "text": t} for i, t in enumerate(texts)])
    # two frames, the second cut short: the first frame's records are read, then the truncation is reported
    zst = zstandard.ZstdCompressor().compress(payload[:len(payload) // 2].rsplit(b"\n", 1)[0] + b"\n")
    rest = zstandard.ZstdCompressor().compress(payload[len(payload) // 2:].split(b"\n", 1)[1])
    rows = _damaged(tmp_path, "cut.jsonl.zst", zst + rest[: len(rest) // 2])
    assert rows[-1]["kind"] == "quarantine" and "truncated" in rows[-1]["error"]
    records = [r for r in rows if r["kind"] == "record"]
    assert len(records) >= payload[:len(payload) // 2].count(b"\n") - 1
    assert [r["line"] for r in records] == list(range(1, len(records) + 1))
    assert rows[-1]["line"] == len(records) + 1

    gz = gzip.compress(payload, mtime=0)
    rows = _damaged(tmp_path, "cut.jsonl.gz", gz[: len(gz) // 2])
    assert rows[-1]["kind"] == "quarantine" and "truncated" in rows[-1]["error"]
    assert sum(r["kind"] == "record" for r in rows) >= 1

    rows = _damaged(tmp_path, "bad.jsonl.gz", gz[:40] + bytes(b ^ 0x5A for b in gz[40:400]) + gz[400:])
    assert rows[-1]["kind"] == "quarantine" and "corrupt" in rows[-1]["error"]

    rows = _damaged(tmp_path, "bad.jsonl.zst", zst[:20] + bytes(b ^ 0x5A for b in zst[20:200]) + zst[200:])
    assert rows[-1]["kind"] == "quarantine" and "corrupt" in rows[-1]["error"]


def test_stage1_results_of_an_older_format_are_redone_not_reused(tmp_path):
    from data_pipeline.stage1 import SUCCESS, STAGE1_FORMAT, is_done, stage1_dir

    work = tmp_path / "_work"
    done = stage1_dir(work, "00000-a-00000000")
    done.mkdir(parents=True)
    (done / SUCCESS).write_text("/data/a.jsonl\n")  # a marker written before doc_id existed: no format line
    assert not is_done(work, "00000-a-00000000")
    (done / SUCCESS).write_text(f"{STAGE1_FORMAT}\n/data/a.jsonl\n")
    assert is_done(work, "00000-a-00000000")


def test_an_oversized_record_is_quarantined_without_being_held_in_memory(tmp_path):
    short = {"id": "s", "text": "a few words " * 10}
    huge = {"id": "h", "text": "word " * 5000}
    path = tmp_path / "big.jsonl.gz"
    path.write_bytes(gzip.compress(_jsonl([short, huge, short, huge]), mtime=0))
    cfg = load_config(input="x", output="y", **{"read.max_record_bytes": 1000})
    rows = list(iter_records(str(path), cfg.read, "s"))
    assert [(r["kind"], r["line"]) for r in rows] == [("record", 1), ("quarantine", 2), ("record", 3),
                                                     ("quarantine", 4)]
    assert "record too large" in rows[1]["error"] and len(rows[1]["raw"]) <= 200


def test_an_input_pattern_that_matches_nothing_is_reported(tmp_path):
    from data_pipeline.readers import expand_inputs

    (tmp_path / "a.jsonl").write_bytes(_jsonl([{"id": "a", "text": "x"}]))
    skipped = []
    files = expand_inputs([str(tmp_path / "a.jsonl"), f"{tmp_path / 'gone.jsonl'},{tmp_path / 'nomatch-*.jsonl'}"],
                          [".jsonl"], skipped)
    assert [os.path.basename(f.path) for f in files] == ["a.jsonl"]
    assert {os.path.basename(s["path"]): s["reason"] for s in skipped} == {
        "gone.jsonl": "no file matches this input pattern", "nomatch-*.jsonl": "no file matches this input pattern"}


def test_a_lone_surrogate_escape_is_quarantined_not_a_crash(tmp_path):
    from data_pipeline.clean import clean_records
    from data_pipeline.config import plain
    from data_pipeline.stage1 import reader_rows

    t1, t2 = _texts(2)
    path = tmp_path / "surrogates.jsonl"
    # json.loads turns "\ud800" into a lone surrogate, which no UTF-8 writer (pyarrow included) accepts:
    # before, the whole stage-1 task, and so the run, failed on it. A proper pair (an emoji) is fine.
    path.write_text(json.dumps({"id": "t", "text": t1 + "\ud800"}) + "\n"
                    + json.dumps({"id": "\udc00", "text": t1}) + "\n"
                    + json.dumps({"id": "e", "text": t2 + " \U0001F600"}) + "\n", encoding="utf-8")
    cfg = plain(load_config(input="x", output="y"))
    rows = list(reader_rows({"path": str(path), "key": "k", "source": "s"}, cfg.read))
    assert [(r["kind"], r["line"]) for r in rows] == [("quarantine", 1), ("quarantine", 2), ("record", 3)]
    assert "surrogate" in rows[0]["error"]
    table = clean_records(rows, cfg)
    assert table.column("status").to_pylist() == ["quarantined", "quarantined", "kept"]


@pytest.fixture
def crash_probe_module():
    """Name of the module registering the ``crash_probe`` stage; unregistered afterwards (the registry is
    process-wide and other tests expect the built-in stages only)."""
    from data_pipeline.stage import REGISTRY

    name = "tests.data_pipeline.crashing_stage"
    yield name
    REGISTRY.pop("crash_probe", None)
    sys.modules.pop(name, None)


def test_a_document_that_makes_a_stage_raise_is_quarantined_and_the_run_goes_on(ray_cluster, tmp_path,
                                                                                crash_probe_module):
    from tests.data_pipeline.crashing_stage import TRIGGER

    t1, t2, t3 = _texts(3)
    bad = t2 + "\n" + TRIGGER
    root = tmp_path / "in"
    root.mkdir()
    (root / "a.jsonl").write_bytes(_jsonl([{"id": "good1", "text": t1}, {"id": "bad", "text": bad},
                                           {"id": "good3", "text": t3}]))
    out = tmp_path / "out"
    run(load_config(input=str(root), output=str(out), stage_modules=[crash_probe_module],
                    stages=["normalize", "crash_probe", "language", "quality", "pii"],
                    **{"heldout.fraction": 0.0}))

    report = json.loads((out / "report.json").read_text())
    _assert_totals_add_up(report)
    assert (report["input"], report["quarantined"]) == (3, 1)
    assert report["quarantined_by_stage"] == {"crash_probe": 1}
    assert sorted(r["id"] for r in output_rows(out, "shards")) == ["good1", "good3"]  # the run went on
    [row] = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert row["file"].endswith("a.jsonl") and row["line"] == 2 and row["stage"] == "crash_probe"
    assert row["error"].startswith("stage 'crash_probe' raised ZeroDivisionError: ")
    assert "crashing_stage.py:" in row["error"]  # where it raised
    assert row["raw"] == bad  # the input text, whole, for whoever fixes the stage
    assert "crash_probe: 1" in (out / "report.md").read_text()


def test_stage_modules_that_cannot_be_imported_are_named(tmp_path):
    from data_pipeline.config import ConfigError, validate

    with pytest.raises(ConfigError, match=r"config key 'stage_modules': cannot import 'no_such_stages_mod'"):
        validate(load_config(input="x", output=str(tmp_path), stage_modules=["no_such_stages_mod"]))
