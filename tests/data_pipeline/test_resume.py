"""An interrupted run resumes: committed files are reused, nothing is duplicated or lost."""

import json
import shutil

import pytest

from data_pipeline.pipeline import run

from .conftest import load_config, output_rows, write_small_corpus


def _ids(out):
    return sorted(r["id"] for r in output_rows(out, "shards")), sorted(r["id"] for r in output_rows(out, "heldout"))


@pytest.mark.slow  # three pipeline runs
def test_resume_after_interruption(ray_cluster, tmp_path):
    records = write_small_corpus(tmp_path / "in")
    out = tmp_path / "out"
    cfg = load_config(input=str(tmp_path / "in" / "*"), output=str(out), **{"heldout.fraction": 0.1})
    first = run(cfg)
    assert first["stage1"] == {"files_processed": 3, "files_reused": 0}
    assert first["input"] == len(records)
    train1, held1 = _ids(out)
    report1 = json.loads((out / "report.json").read_text())

    # simulate a crash: one file's stage-1 output lost its marker mid-commit, a staging dir was
    # left half written, the final shards were partly written and report.json never appeared
    stage1 = sorted((out / "_work" / "stage1").iterdir())
    (stage1[1] / "_SUCCESS").unlink()
    shutil.rmtree(stage1[2])
    (out / "_work" / "staging-deadbeef" / "file_key=x").mkdir(parents=True)
    (out / "_work" / "staging-deadbeef" / "file_key=x" / "junk.parquet").write_bytes(b"not parquet")
    for part in sorted((out / "shards").glob("*.parquet"))[:2]:
        part.unlink()
    (out / "report.json").unlink()

    second = run(cfg)
    assert second["stage1"] == {"files_processed": 2, "files_reused": 1}
    train2, held2 = _ids(out)
    assert train2 == train1 and held2 == held1
    assert len(set(train2)) == len(train2) and not set(train2) & set(held2)
    report2 = json.loads((out / "report.json").read_text())
    for key in ("input", "kept", "heldout", "dropped_total", "quarantined", "dropped"):
        assert report2[key] == report1[key], key
    assert not (out / "_work" / "staging-deadbeef").exists()

    third = run(cfg)  # nothing left to do in stage 1
    assert third["stage1"] == {"files_processed": 0, "files_reused": 3}
    assert _ids(out) == (train1, held1)
