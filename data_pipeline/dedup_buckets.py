"""Bucket shuffle: documents grouped by exact hash and LSH band hash, turned into candidate pairs of integer ids.

Map: one task per group of stage-1 part files emits a ``(key, kind, id)`` row per bucket
a kept document is in (kind 0: exact hash, kind 1: band hash; the pair is the
bucket, so an exact hash and a band hash that happen to be equal never meet).
Reduce: one task per key partition sorts its rows and, per bucket of 2+
documents, emits every pair of a small bucket (up to ``ALL_PAIRS_MAX_BUCKET``)
and a star from the smallest id for a larger one, exactly the rule of the
previous implementation (the verification of near pairs needs all pairs of a
small bucket, see docs/data_pipeline.md). Exact buckets are final: their star
edges go straight to the connected components. Near candidate pairs are split
by the file that holds their first document, where the verification reads its
signature.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_pipeline.shuffle import by_file, concat, doc_ids, returns, split

ALL_PAIRS_MAX_BUCKET = 16


def map_buckets(files: dict[int, str], num_partitions: int, exact: bool, fuzzy: bool):
    """Bucket rows ``(key, kind, id)`` of a group of part files ({index: path}), split into ``num_partitions`` by key.

    A group, not one file per task: each map task returns ``num_partitions`` objects, and the driver
    holds a reference to each, so a task per file would make the driver's share grow with the number
    of files (files x partitions references); groups keep it at partitions x partitions.
    """
    rows = [_bucket_rows(index, path, exact, fuzzy) for index, path in sorted(files.items())]
    key = np.concatenate([r[0] for r in rows]) if rows else np.empty(0, np.uint64)
    kind = np.concatenate([r[1] for r in rows]) if rows else np.empty(0, np.int8)
    doc = np.concatenate([r[2] for r in rows]) if rows else np.empty(0, np.int64)
    return returns(split((key % np.uint64(num_partitions)).astype(np.int64), num_partitions, key, kind, doc))


def _bucket_rows(file_index: int, path: str, exact: bool, fuzzy: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One part file's kept documents -> parallel arrays (key, kind, id), one entry per bucket."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["status", "exact_hash", "bands"])
    rows = np.flatnonzero(pc.equal(table.column("status"), "kept").to_numpy(zero_copy_only=False))
    kept = table.take(pa.array(rows))
    keys, kinds, out_ids = bucket_entries(kept, doc_ids(file_index, rows), exact, fuzzy)
    return (np.concatenate([np.empty(0, np.uint64), *keys]), np.concatenate([np.empty(0, np.int8), *kinds]),
            np.concatenate([np.empty(0, np.int64), *out_ids]))


def bucket_entries(kept: pa.Table, ids: np.ndarray, exact: bool,
                   fuzzy: bool) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """The definition of a bucket, shared with the legacy reference: (key, kind) pieces per document,
    kind 0 an exact-hash bucket, kind 1 an LSH band bucket (equal hashes of the two kinds never meet)."""
    keys: list[np.ndarray] = []
    kinds: list[np.ndarray] = []
    out_ids: list[np.ndarray] = []
    if exact and len(kept):
        keys.append(kept.column("exact_hash").to_numpy(zero_copy_only=False).astype(np.uint64))
        kinds.append(np.zeros(len(kept), dtype=np.int8))
        out_ids.append(ids)
    if fuzzy and len(kept):
        bands = kept.column("bands")
        lengths = pc.list_value_length(bands).to_numpy(zero_copy_only=False).astype(np.int64)
        keys.append(pc.list_flatten(bands).to_numpy(zero_copy_only=False).astype(np.uint64))
        kinds.append(np.ones(int(lengths.sum()), dtype=np.int8))
        out_ids.append(np.repeat(ids, lengths))
    return keys, kinds, out_ids


def bucket_pairs(keys: np.ndarray, kinds: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate pairs ``(smaller id, larger id, kind)`` of every bucket with 2+ distinct documents."""
    if len(keys) < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int8)
    order = np.lexsort((ids, keys, kinds))  # by bucket, then id: the first of a run is the smallest
    keys, kinds, ids = keys[order], kinds[order], ids[order]
    new_bucket = np.ones(len(keys), dtype=bool)
    new_bucket[1:] = (keys[1:] != keys[:-1]) | (kinds[1:] != kinds[:-1])
    first_ids = ids[np.maximum.accumulate(np.where(new_bucket, np.arange(len(keys)), 0))]
    is_pair = ~new_bucket & (ids != first_ids)  # one id twice in a bucket (a repeated band) is no pair
    firsts, others, pair_kinds = [first_ids[is_pair]], [ids[is_pair]], [kinds[is_pair]]
    starts = np.flatnonzero(new_bucket)
    ends = np.append(starts[1:], len(keys))
    sizes = ends - starts
    small = (sizes >= 3) & (sizes <= ALL_PAIRS_MAX_BUCKET)  # size 2: the star already is every pair
    for start, end in zip(starts[small], ends[small]):
        rest = np.unique(ids[start + 1:end])
        rest = rest[rest != ids[start]]  # the star already links the first
        if len(rest) > 1:
            i, j = np.triu_indices(len(rest), k=1)
            firsts.append(rest[i])
            others.append(rest[j])
            pair_kinds.append(np.full(len(i), kinds[start], dtype=np.int8))
    return np.concatenate(firsts), np.concatenate(others), np.concatenate(pair_kinds)


def unique_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct pairs, sorted: a close pair shares many bands, and it is one pair."""
    if not len(a):
        return a, b
    order = np.lexsort((b, a))
    a, b = a[order], b[order]
    keep = np.ones(len(a), dtype=bool)
    keep[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    return a[keep], b[keep]


def reduce_buckets(num_out: int, *parts: tuple):
    """One key partition -> ``num_out`` near-pair parts (by file of the first id), exact edges, exact pair count."""
    a, b, kind = bucket_pairs(concat(parts, 0, np.uint64), concat(parts, 1, np.int8), concat(parts, 2, np.int64))
    exact = kind == 0
    ea, eb = unique_pairs(a[exact], b[exact])  # exact buckets are disjoint: distinct here is distinct overall
    na, nb = unique_pairs(a[~exact], b[~exact])
    near = split(by_file(na, num_out), num_out, na, nb)
    la, lb = smallest_link(ea, eb)
    return returns(near + [(la, lb), len(ea)])


def smallest_link(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One edge per larger member, to the smallest id it is paired with: a bucket's star, whatever its size."""
    order = np.lexsort((a, b))
    a, b = a[order], b[order]
    lead = np.ones(len(b), dtype=bool)
    lead[1:] = b[1:] != b[:-1]
    return a[lead], b[lead]
