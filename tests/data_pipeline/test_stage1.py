"""Stage 1's task body streams a file in bounded batches, and a run that cannot use its CPUs says so."""

import logging

from data_pipeline.config import plain
from data_pipeline.stage1 import _warn_if_too_few_files, clean_files

from .conftest import load_config, write_small_corpus


def test_clean_files_streams_every_row_in_bounded_batches(tmp_path):
    import pyarrow as pa

    records = write_small_corpus(tmp_path)
    cfg = plain(load_config(input="unused", output="unused", **{"ray.batch_size": 10}))
    items = pa.Table.from_pylist([{"path": str(p), "key": p.stem, "source": "test"} for p in sorted(tmp_path.iterdir())])

    tables = list(clean_files(items, cfg))

    assert all(t.num_rows <= 10 for t in tables)
    ids = [i for t in tables for i in t.column("id").to_pylist()]
    assert sorted(ids) == sorted(r["id"] for r in records)  # one output row per input record, none twice
    keys = {k for t in tables for k in t.column("file_key").to_pylist()}
    assert keys == {p.stem for p in tmp_path.iterdir()}


def test_too_few_files_for_the_cpus_is_reported(ray_cluster, caplog):
    with caplog.at_level(logging.WARNING, logger="data_pipeline.stage1"):
        _warn_if_too_few_files(pending=1, group=16)
    assert "keep only 1 of 2 CPUs busy" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="data_pipeline.stage1"):
        _warn_if_too_few_files(pending=5, group=16)
        _warn_if_too_few_files(pending=0, group=16)
    assert caplog.text == ""
