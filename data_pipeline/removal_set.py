"""From connected components to the removal set files the final write joins against.

Which member of a cluster stays, and why each other one goes, is decided here,
on the workers, with the same rule as always: the member with the smallest
``input id NUL doc_id`` stays (the same whatever the order of files, blocks or
workers); a member with the same exact hash as an earlier (smaller) member is
an ``exact_duplicate``, any other an ``near_duplicate``. Components here are
over exact and verified near edges together, which is what resolving exact
clusters first and then near clusters over their survivors amounts to: the
smallest member of a component is the survivor of its exact cluster too.

Layout: ``_work/dedup/removals-PPPPP.parquet`` holds the cluster members of the
part files ``index % partitions == PPPPP``, sorted by integer id, one row each:
``doc`` (part file index << 32 | row), ``reason`` (null for the survivor),
``dup_cluster_size`` and ``duplicate_of`` (the survivor's doc_id). Documents in
no cluster are in no file: they are kept, with ``dup_cluster_size`` 1.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_pipeline.shuffle import by_file, by_node, concat, file_of, returns, row_of, split

EXACT = "exact_duplicate"
NEAR = "near_duplicate"
REASONS = np.array([None, EXACT, NEAR], dtype=object)  # reason code 0: the cluster's survivor


def removal_path(directory: Path | str, file_index: int, num_partitions: int) -> Path:
    return Path(directory) / f"removals-{file_index % num_partitions:05d}.parquet"


def attach_keys(files: dict[int, str], num_out: int, *parts: tuple):
    """(member, root) of members in ``files`` -> (root, member, key, exact hash), split by root."""
    member, root = concat(parts, 0, np.int64), concat(parts, 1, np.int64)
    keys = np.empty(len(member), dtype=object)
    hashes = np.zeros(len(member), dtype=np.uint64)
    which = file_of(member)
    for index in np.unique(which):
        at = np.flatnonzero(which == index)
        table = pq.read_table(files[int(index)], columns=["id", "doc_id", "exact_hash"])
        table = table.take(pa.array(row_of(member[at])))
        keys[at] = [f"{i}\0{d}" for i, d in zip(table.column("id").to_pylist(), table.column("doc_id").to_pylist())]
        hashes[at] = table.column("exact_hash").to_numpy(zero_copy_only=False).astype(np.uint64)
    return returns(split(by_node(root, num_out), num_out, root, member, keys, hashes))


def resolve(exact: bool, num_out: int, *parts: tuple):
    """Members of the components rooted in this partition -> removal rows, split by file of the member."""
    root, member = concat(parts, 0, np.int64), concat(parts, 1, np.int64)
    keys, hashes = concat(parts, 2, object), concat(parts, 3, np.uint64)
    n = len(member)
    by_key = np.argsort(keys, kind="stable") if n else np.empty(0, np.int64)
    order = by_key[np.argsort(root[by_key], kind="stable")]  # by component, then key
    root, member, keys, hashes = root[order], member[order], keys[order], hashes[order]
    start = np.ones(n, dtype=bool)
    start[1:] = root[1:] != root[:-1]
    group = np.cumsum(start) - 1
    starts = np.flatnonzero(start)
    size = np.diff(np.append(starts, n))[group]
    rank = np.arange(n)
    by_hash = np.lexsort((rank, hashes, root))  # within a component and hash, smallest key first
    first_of_hash = np.zeros(n, dtype=bool)
    lead = np.ones(n, dtype=bool)
    lead[1:] = (root[by_hash][1:] != root[by_hash][:-1]) | (hashes[by_hash][1:] != hashes[by_hash][:-1])
    first_of_hash[by_hash[lead]] = True
    reason = np.where(start, 0, np.where(exact & ~first_of_hash, 1, 2)).astype(np.int8)
    survivor_doc = np.array([k.rsplit("\0", 1)[1] for k in keys[starts].tolist()], dtype=object)
    duplicate_of = survivor_doc[group] if n else np.empty(0, object)
    return returns(split(by_file(member, num_out), num_out, member, reason, size.astype(np.int64), duplicate_of))


def write_removals(path: str, *parts: tuple) -> tuple[int, int, int]:
    """Write one removal file (atomically); return (exact removed, near removed, clusters)."""
    member, reason = concat(parts, 0, np.int64), concat(parts, 1, np.int8)
    size, duplicate_of = concat(parts, 2, np.int64), concat(parts, 3, object)
    order = np.argsort(member, kind="stable")
    table = pa.table({"doc": member[order], "reason": pa.array(REASONS[reason[order]].tolist(), pa.string()),
                      "dup_cluster_size": size[order],
                      "duplicate_of": pa.array(duplicate_of[order].tolist(), pa.string())})
    tmp = Path(path).with_name(f".{Path(path).name}.tmp-{uuid.uuid4().hex}")
    pq.write_table(table, tmp, compression="zstd", row_group_size=64 * 1024)
    os.replace(tmp, path)
    return int((reason == 1).sum()), int((reason == 2).sum()), int((reason == 0).sum())


def read_removals(directory: Path | str, file_index: int, num_partitions: int) -> pa.Table:
    """The removal rows of one part file, with its ``row``; empty when dedup wrote none."""
    path = removal_path(directory, file_index, num_partitions)
    schema = pa.schema([("row", pa.int64()), ("reason", pa.string()), ("dup_cluster_size", pa.int64()),
                        ("duplicate_of", pa.string())])
    if not path.exists():
        return schema.empty_table()
    table = pq.read_table(path)  # sorted by doc: this file's rows are one slice
    docs = table.column("doc").to_numpy()
    lo, hi = np.searchsorted(docs, [file_index << 32, (file_index + 1) << 32])
    table = table.slice(int(lo), int(hi - lo))
    rows = row_of(table.column("doc").to_numpy())
    return pa.table({"row": rows, "reason": table.column("reason"),
                     "dup_cluster_size": table.column("dup_cluster_size"),
                     "duplicate_of": table.column("duplicate_of")}, schema=schema)
