"""The distributed dedup removes exactly what the driver-side implementation removed, on the same stage-1 files."""

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from data_pipeline import dedup, dedup_legacy
from data_pipeline.config import plain
from data_pipeline.readers import expand_inputs
from data_pipeline.removal_set import read_removals

from .conftest import CORPUS, load_config, output_rows


def part_files_of(out: Path, pattern: str) -> list[str]:
    """The stage-1 part files of a finished run, in the order the pipeline indexes them."""
    files = expand_inputs(pattern, list(load_config(input=pattern, output="x").read.extensions), [], {})
    return dedup.stage1_part_files(out / "_work", [f.key for f in files])


def removal_sets(part_files: list[str], work: Path, partitions: int) -> tuple[dict, dict]:
    """({removed doc_id: reason}, {survivor doc_id: cluster size}) from the removal files."""
    removed, sizes = {}, {}
    for index, path in enumerate(part_files):
        doc_ids = pq.read_table(path, columns=["doc_id"]).column("doc_id").to_pylist()
        rows = read_removals(dedup.removal_dir(work), index, partitions).to_pylist()
        for r in rows:
            if r["reason"] is None:
                sizes[doc_ids[r["row"]]] = r["dup_cluster_size"]
            else:
                removed[doc_ids[r["row"]]] = r["reason"]
    return removed, sizes


def test_demo_corpus_same_removals_counts_and_report(corpus_run, tmp_path):
    out, summary = corpus_run
    pattern = str(CORPUS / "*.jsonl.gz")
    cfg = plain(load_config(input=pattern, output=str(out)))
    part_files = part_files_of(out, pattern)
    assert len(part_files) > 1
    legacy_removed, legacy_stats = dedup_legacy.find_duplicates(part_files, cfg)
    removed, sizes = removal_sets(part_files, out / "_work", summary["dedup"]["partitions"])
    assert removed == legacy_removed and len(removed) > 300  # 331 real + the planted ones
    for key in ("exact_pairs", "near_candidate_pairs", "near_verified_pairs"):
        assert summary["dedup"][key] == legacy_stats[key], key
    reasons = Counter(legacy_removed.values())
    assert {r: summary["dropped"][f"dedup/{r}"] for r in reasons} == dict(reasons)
    # every cluster: one survivor, its size the members removed in its name plus itself
    assert sum(sizes.values()) == len(sizes) + len(removed)

    # another partitioning of every shuffle: the same removal set (determinism does not hang on layout)
    cfg["dedup"].update(shuffle_partitions=3, partition_rows=1)
    stats = dedup.find_duplicates(part_files, cfg, tmp_path)
    assert stats["partitions"] == 3
    assert removal_sets(part_files, tmp_path, 3) == (removed, sizes)
    assert stats["exact_removed"] + stats["near_removed"] == len(removed) and stats["clusters"] == len(sizes)


def test_dup_cluster_size_on_every_kept_document(corpus_run):
    out, _ = corpus_run
    rows = output_rows(out, "shards") + output_rows(out, "heldout")
    sizes = Counter(r["dup_cluster_size"] for r in rows)
    assert sizes[1] > 0.8 * len(rows)  # most documents have no duplicate
    assert sum(n for size, n in sizes.items() if size > 1) > 50
    assert all(isinstance(r["dup_cluster_size"], int) and r["dup_cluster_size"] >= 1 for r in rows)
    # a planted exact duplicate's original is kept and counts its copy
    from .conftest import planted

    exact = {p["of"]: p["id"] for p in planted().values() if p["kind"] == "exact_duplicate"}
    by_id = {r["id"]: r for r in rows}
    kept_originals = [by_id[o] for o in exact if o in by_id]
    assert len(kept_originals) >= 0.8 * len(exact) and all(r["dup_cluster_size"] >= 2 for r in kept_originals)
