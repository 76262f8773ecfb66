"""Hostile input: nothing lost, nothing silently wrong.

Each test here reproduces one way a real crawl breaks a naive pipeline (ids repeated across files, a
line nested 10,000 levels deep, a symlink loop, a file with an upper-case or unknown extension, a
truncated archive) and checks that every input record is either kept or counted with its reason.
"""

import json

from data_pipeline.pipeline import run

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
