"""Global deduplication on the cluster: nothing per document comes back to the driver.

The only step that needs every document at once. It runs as a chain of Ray
tasks passing numpy arrays through the object store, split by key, node or
file at each hop; the driver holds object references and gathers counts:

1. bucket shuffle (dedup_buckets.py): ``(key, kind, integer id)`` rows per
   exact hash and LSH band; reduce tasks emit exact star edges and near
   candidate pairs with the same all-pairs/star rule as before;
2. verification (dedup_verify.py): each pair picks up the signatures of its
   two documents from the files that hold them and is checked against the
   per-language threshold, in the tasks;
3. connected components (components.py): large-star/small-star over exact
   and verified near edges together;
4. removal set (removal_set.py): components get the keys of their members,
   keep the smallest ``input id NUL doc_id`` (as the driver's union-find
   did), name the reason of every other member and are written to
   ``_work/dedup/removals-*.parquet``, which the final write joins against.

The ids dedup works on are never the input's own: a crawl repeats ids across
files, so a document is its position (part file, row) while clusters are
formed and its ``input id NUL doc_id`` when the survivor is chosen, so that
which documents go depends only on their content and the survivor of a
cluster is still the one with the smallest input id. Repeated input ids are
counted (``count_input_ids``) for the report.

data_pipeline/dedup_legacy.py is the driver-side implementation this
replaced, kept as the reference the tests compare against.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from data_pipeline.components import connected_components
from data_pipeline.dedup_buckets import ALL_PAIRS_MAX_BUCKET, map_buckets, reduce_buckets  # noqa: F401 (re-export)
from data_pipeline.dedup_verify import attach_first, threshold_for, verify_second  # noqa: F401 (re-export)
from data_pipeline.removal_set import EXACT, NEAR, attach_keys, removal_path, resolve, write_removals  # noqa: F401
from data_pipeline.shuffle import by_file, gather_scalars, submit

MAX_ID_EXAMPLES = 3  # repeated input ids named in the report
EMPTY_STATS = {"exact_pairs": 0, "near_candidate_pairs": 0, "near_verified_pairs": 0, "exact_removed": 0,
               "near_removed": 0, "clusters": 0, "cc_rounds": 0, "partitions": 1}


def removal_dir(work: Path) -> Path:
    return work / "dedup"


def _files_of(part_files: list[str], p: int, num: int) -> dict[int, str]:
    """The part files a file-partition task reads: ``index % num == p``."""
    return {i: path for i, path in enumerate(part_files) if i % num == p}


def partitions_for(part_files: list[str], cfg: Any) -> int:
    """``dedup.shuffle_partitions``, or fewer for a corpus under ``partition_rows`` rows per partition.

    Every step costs partitions x partitions objects and a few tasks per partition: on a small
    corpus (the tests, a demo) that fixed cost is most of dedup's time. The row count comes from
    the parquet footers, so the driver reads no documents.
    """
    import pyarrow.parquet as pq

    most = max(1, int(cfg.dedup.shuffle_partitions))
    per = max(1, int(cfg.dedup.get("partition_rows", 20000)))
    rows = sum(pq.ParquetFile(path).metadata.num_rows for path in part_files)
    return max(1, min(most, -(-rows // per)))


def find_duplicates(part_files: list[str], cfg: Any, work: Path) -> dict[str, int]:
    """Write the removal set of the kept rows in ``part_files`` under ``work/dedup``; return counts.

    The directory is recreated on every call (dedup always reruns from the committed stage-1 files),
    so a stale removal file can never be joined against. ``partitions`` in the result is how many
    removal files there are (``removal_path``), which the final write needs to find its file.
    """
    out = removal_dir(work)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    d = cfg.dedup
    if not part_files or not (d.exact or d.fuzzy):
        return dict(EMPTY_STATS)
    p = partitions_for(part_files, cfg)
    num_perm = int(d.num_perm)
    groups = min(p, len(part_files))
    mapped = [submit(map_buckets, p, _files_of(part_files, g, groups), p, bool(d.exact), bool(d.fuzzy))
              for g in range(groups)]
    # Each list is dropped once the next step is submitted: the tasks hold what they need, and the
    # driver keeps at most a few partitions x partitions references alive.
    reduced = [submit(reduce_buckets, p + 2, p, *[m[k] for m in mapped]) for k in range(p)]
    del mapped
    firsts = [submit(attach_first, p + 1, _files_of(part_files, k, p), num_perm, d.threshold, p,
                     *[r[k] for r in reduced]) for k in range(p)]
    verified = [submit(verify_second, 2, _files_of(part_files, k, p), num_perm, d.threshold,
                       *[f[k] for f in firsts]) for k in range(p)]
    pair_counts = [r[p + 1] for r in reduced] + [f[p] for f in firsts] + [v[1] for v in verified]
    edges = [r[p] for r in reduced] + [v[0] for v in verified]
    del reduced, firsts, verified
    links, rounds = connected_components(edges, p, by_file)
    del edges
    keyed = [submit(attach_keys, p, _files_of(part_files, k, p), p, *[lk[k] for lk in links]) for k in range(p)]
    del links
    rows = [submit(resolve, p, bool(d.exact), p, *[x[k] for x in keyed]) for k in range(p)]
    del keyed
    written = [submit(write_removals, 1, str(removal_path(out, k, p)), *[r[k] for r in rows])[0] for k in range(p)]
    del rows
    counts = gather_scalars(pair_counts + written)
    exact_pairs, candidates = sum(counts[:p]), sum(counts[p:2 * p])
    verified_pairs, totals = sum(counts[2 * p:3 * p]), np.array(counts[3 * p:]).sum(axis=0)
    return {"exact_pairs": int(exact_pairs), "near_candidate_pairs": int(candidates),
            "near_verified_pairs": int(verified_pairs), "exact_removed": int(totals[0]),
            "near_removed": int(totals[1]), "clusters": int(totals[2]), "cc_rounds": int(rounds), "partitions": p}


def map_input_ids(path: str, num_partitions: int) -> list[np.ndarray]:
    """Input ids of one stage-1 file's records (not quarantine rows), split into ``num_partitions`` by hash."""
    import pyarrow.parquet as pq
    import xxhash

    table = pq.read_table(path, columns=["id", "status"])
    ids = table.filter(pa.compute.not_equal(table.column("status"), "quarantined")).column("id").to_pylist()
    part = np.fromiter((xxhash.xxh64_intdigest(i.encode("utf-8", "surrogatepass")) % num_partitions for i in ids),
                       dtype=np.int64, count=len(ids))
    values = np.asarray(ids, dtype=object)
    return [values[part == p] for p in range(num_partitions)]


def reduce_input_ids(*parts: np.ndarray) -> tuple[int, int, list[str]]:
    """(ids seen more than once, records carrying them, a few of them) in one partition."""
    from collections import Counter

    counts = Counter(x for p in parts for x in p.tolist())
    repeated = sorted(i for i, n in counts.items() if n > 1)
    return len(repeated), sum(counts[i] for i in repeated), [i[:200] for i in repeated[:MAX_ID_EXAMPLES]]


def count_input_ids(part_files: list[str], cfg: Any) -> dict:
    """How many input ids are repeated (across or within files): the report's ``input_ids``."""
    import ray

    num_partitions = max(1, int(cfg.dedup.shuffle_partitions))
    if not part_files:
        return {"repeated": 0, "records": 0, "examples": []}
    map_task = ray.remote(map_input_ids).options(num_returns=num_partitions, num_cpus=1)
    reduce_task = ray.remote(reduce_input_ids).options(num_cpus=1)
    mapped = [map_task.remote(p, num_partitions) for p in part_files]
    if num_partitions == 1:
        mapped = [[m] for m in mapped]
    results = ray.get([reduce_task.remote(*[m[p] for m in mapped]) for p in range(num_partitions)])
    examples = sorted(x for _, _, ex in results for x in ex)[:MAX_ID_EXAMPLES]
    return {"repeated": sum(r[0] for r in results), "records": sum(r[1] for r in results), "examples": examples}


def stage1_part_files(work: Path, keys: list[str]) -> list[str]:
    files: list[str] = []
    for key in keys:
        files.extend(sorted(str(p) for p in (work / "stage1" / key).glob("*.parquet")))
    return files
