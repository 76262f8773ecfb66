"""The previous, driver-bound global dedup, kept as the reference the distributed one is checked against.

Not used by the pipeline (data_pipeline/dedup.py is): tests/data_pipeline/test_dedup_equivalence.py
runs both on the same stage-1 files and bench/data_pipeline/dedup_scale.py measures both. What it did:

The only step that needs every document at once, so it is built to move as
little as possible:

1. Ray Data reads just ``(id, exact_hash, bands)`` of kept documents and
   explodes them into one ``(key, id)`` row per bucket key.
2. A hash shuffle on Ray tasks brings each bucket to one reduce task, which
   emits candidate pairs: every pair of a small bucket (up to
   ``ALL_PAIRS_MAX_BUCKET`` documents), and a star ``(smallest id, other id)``
   for a larger one, which stays linear in its size.
3. Near-duplicate candidates are verified on the full signature against the
   threshold of their languages (``dedup.threshold``); this is why small
   buckets emit all their pairs: in a star, a chance member that happens to
   hold the smallest id would fail verification with both members of a true
   pair, and the pair would be lost.
4. The driver runs union-find over the verified pairs only (memory grows with
   the number of duplicates, not with the corpus) and keeps the smallest id of
   each connected component, so the survivor is the same whatever the order of
   files, blocks or workers.

The ids dedup works on are never the input's own: a crawl repeats ids across
files, and two copies of one text under one id would look like one document
(both kept), while a unique text sharing its id with a removed copy would be
removed with it. Each document is known here by ``dedup_key``: its input id,
then its pipeline ``doc_id`` (``<file key>:<line>``, unique in a run), so
which documents go depends only on their content and the survivor of a
cluster is still the one with the smallest input id. Repeated input ids are
counted for the report (``dedup.count_input_ids``, shared by both).

Exact-duplicate clusters are resolved first; near-duplicate clusters are then
formed over what is left, so each removed document gets one honest reason.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import pyarrow as pa

EXACT = "exact_duplicate"
NEAR = "near_duplicate"
# Buckets up to this size emit every pair (at most 120); larger ones, a star. True duplicates share
# many buckets, so a star in a big bucket still connects them through their other, smaller buckets.
ALL_PAIRS_MAX_BUCKET = 16


def dedup_keys(table: pa.Table) -> np.ndarray:
    """``input id NUL doc_id`` per row: unique (doc_id is), and ordered by input id first."""
    return np.array([f"{i}\0{d}" for i, d in zip(table.column("id").to_pylist(), table.column("doc_id").to_pylist())],
                    dtype=object)


def doc_id_of(key: str) -> str:
    """The doc_id a ``dedup_keys`` key was made from (a doc_id holds no NUL)."""
    return key.rsplit("\0", 1)[1]


class UnionFind:
    """Union-find over string ids whose root is always the smallest id of its set."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        parent = self.parent
        root = parent.setdefault(x, x)
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if rb < ra:
                ra, rb = rb, ra
            self.parent[rb] = ra

    def members(self) -> Iterable[str]:
        return self.parent.keys()


def removals_from_pairs(exact_pairs: Iterable[tuple[str, str]],
                        near_pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """{removed id: reason}: every member of a cluster except its smallest id goes."""
    removed: dict[str, str] = {}
    exact = UnionFind()
    for a, b in exact_pairs:
        exact.union(a, b)
    for x in list(exact.members()):
        if exact.find(x) != x:
            removed[x] = EXACT
    near = UnionFind()
    for a, b in near_pairs:  # an exact duplicate stands for its survivor in near-dup clusters
        near.union(exact.find(a) if a in exact.parent else a, exact.find(b) if b in exact.parent else b)
    for x in list(near.members()):
        if near.find(x) != x and x not in removed:
            removed[x] = NEAR
    return removed


def bucket_rows(table: pa.Table, exact: bool, fuzzy: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kept rows -> parallel arrays (key, kind, id) with one entry per bucket a document is in.

    kind 0 is an exact-hash bucket, kind 1 an LSH band bucket; the pair (key, kind) is the
    bucket, so an exact hash and a band hash that happen to be equal never meet.
    """
    from data_pipeline.dedup_buckets import bucket_entries

    kept = table.filter(pa.compute.equal(table.column("status"), "kept"))
    keys, kinds, out_ids = bucket_entries(kept, dedup_keys(kept), exact, fuzzy)
    if not keys:
        return np.empty(0, np.uint64), np.empty(0, np.int8), np.empty(0, object)
    return np.concatenate(keys), np.concatenate(kinds), np.concatenate(out_ids)


def map_partition(path: str, num_partitions: int, exact: bool, fuzzy: bool) -> list[tuple]:
    """Shuffle map side: one file's bucket rows split into ``num_partitions`` by key."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["id", "doc_id", "status", "exact_hash", "bands"])
    keys, kinds, ids = bucket_rows(table, exact, fuzzy)
    part = (keys % np.uint64(num_partitions)).astype(np.int64)
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(num_partitions + 1))
    out = []
    for p in range(num_partitions):
        sel = order[bounds[p]:bounds[p + 1]]
        out.append((keys[sel], kinds[sel], ids[sel]))
    return out


def reduce_partition(*parts: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle reduce side: candidate pairs ``(smaller id, larger id, kind)`` of every bucket with 2+ documents."""
    keys = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.uint64)
    kinds = np.concatenate([p[1] for p in parts]) if parts else np.empty(0, np.int8)
    ids = np.concatenate([p[2] for p in parts]) if parts else np.empty(0, object)
    if len(keys) < 2:
        return np.empty(0, object), np.empty(0, object), np.empty(0, np.int8)
    order = np.lexsort((ids.astype(str), keys, kinds))  # by bucket, then id: first of a run is the smallest
    keys, kinds, ids = keys[order], kinds[order], ids[order]
    new_bucket = np.ones(len(keys), dtype=bool)
    new_bucket[1:] = (keys[1:] != keys[:-1]) | (kinds[1:] != kinds[:-1])
    bucket_start = np.maximum.accumulate(np.where(new_bucket, np.arange(len(keys)), 0))
    first_ids = ids[bucket_start]
    is_pair = ~new_bucket & (ids != first_ids)  # the same id twice in a bucket (repeated band) is no pair
    firsts, others, pair_kinds = [first_ids[is_pair]], [ids[is_pair]], [kinds[is_pair]]
    starts = np.flatnonzero(new_bucket)
    ends = np.append(starts[1:], len(keys))
    sizes = ends - starts
    small = (sizes >= 3) & (sizes <= ALL_PAIRS_MAX_BUCKET)  # size 2: the star already is every pair
    for start, end in zip(starts[small], ends[small]):
        rest = sorted(set(ids[start + 1:end].tolist()) - {ids[start]})  # the star already links the first
        extra = [(x, y) for i, x in enumerate(rest) for y in rest[i + 1:]]
        if extra:
            firsts.append(np.array([x for x, _ in extra], dtype=object))
            others.append(np.array([y for _, y in extra], dtype=object))
            pair_kinds.append(np.full(len(extra), kinds[start], dtype=np.int8))
    return np.concatenate(firsts), np.concatenate(others), np.concatenate(pair_kinds)


def candidate_pairs(part_files: list[str], cfg: Any) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(exact pairs, near candidate pairs) via a hash shuffle on Ray tasks."""
    import ray

    num_partitions = max(1, int(cfg.dedup.shuffle_partitions))
    map_task = ray.remote(map_partition).options(num_returns=num_partitions, num_cpus=1)
    reduce_task = ray.remote(reduce_partition).options(num_cpus=1)
    mapped = [map_task.remote(p, num_partitions, bool(cfg.dedup.exact), bool(cfg.dedup.fuzzy)) for p in part_files]
    if num_partitions == 1:
        mapped = [[m] for m in mapped]
    reduced = [reduce_task.remote(*[m[p] for m in mapped]) for p in range(num_partitions)]
    exact_pairs: set[tuple[str, str]] = set()
    near_pairs: set[tuple[str, str]] = set()  # a set: a close pair shares many bands, it is one pair
    for a, b, kind in ray.get(reduced):
        for x, y, k in zip(a.tolist(), b.tolist(), kind.tolist()):
            (exact_pairs if k == 0 else near_pairs).add((x, y))
    return sorted(exact_pairs), sorted(near_pairs)


def threshold_for(lang: str, threshold: Any) -> float:
    """A number applies to every language; a mapping is per language, with ``default`` for the rest."""
    if isinstance(threshold, (int, float)):
        return float(threshold)
    return float(threshold[lang] if lang in threshold else threshold["default"])


def fetch_signatures(path: str, wanted: set[str]) -> dict[str, tuple[np.ndarray, str]]:
    """(stored MinHash signature, language) of the wanted ids in one stage-1 file."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["id", "doc_id", "lang", "signature"])
    ids = dedup_keys(table).tolist()
    rows = [i for i, doc_id in enumerate(ids) if doc_id in wanted]
    if not rows:
        return {}
    picked = pa.array(rows)
    sigs, langs = table.column("signature").take(picked), table.column("lang").take(picked).to_pylist()
    return {ids[i]: (np.asarray(s.as_py(), dtype=np.uint32), lang) for i, s, lang in zip(rows, sigs, langs)}


def verify_pairs(pairs: list[tuple[str, str]], part_files: list[str], threshold: Any) -> list[tuple[str, str]]:
    """Keep candidate pairs whose estimated Jaccard reaches the stricter threshold of their two languages.

    LSH with few rows per band finds low-similarity pairs too (that is what
    buys recall at 20-30% edits); checking the full signature of just the
    candidate documents removes chance collisions. The threshold is per
    language because the noise floor is: unrelated English documents share
    almost no word 5-grams, while unrelated Chinese ones share character
    5-grams (a character 5-gram is two or three words) and shared code or
    Latin text, so chance candidates there reach estimated Jaccard 0.3-0.4.
    Only signatures of documents in some pair travel to the driver.
    """
    import ray

    if not pairs:
        return []
    wanted = {x for pair in pairs for x in pair}
    wanted_ref = ray.put(wanted)
    task = ray.remote(fetch_signatures).options(num_cpus=1)
    sigs: dict[str, np.ndarray] = {}
    needs: dict[str, float] = {}  # each document's threshold, looked up once rather than per pair
    for part in ray.get([task.remote(p, wanted_ref) for p in part_files]):
        for doc_id, (sig, lang) in part.items():
            sigs[doc_id], needs[doc_id] = sig, threshold_for(lang, threshold)
    return [(a, b) for a, b in pairs if float(np.mean(sigs[a] == sigs[b])) >= max(needs[a], needs[b])]


def find_duplicates(part_files: list[str], cfg: Any) -> tuple[dict[str, str], dict[str, int]]:
    """({removed doc_id: reason}, stats) over the kept rows stored in ``part_files``."""
    if not part_files or not (cfg.dedup.exact or cfg.dedup.fuzzy):
        return {}, {"exact_pairs": 0, "near_candidate_pairs": 0, "near_verified_pairs": 0}
    exact_pairs, near_candidates = candidate_pairs(part_files, cfg)
    near_pairs = verify_pairs(near_candidates, part_files, cfg.dedup.threshold)
    removed = {doc_id_of(key): reason for key, reason in removals_from_pairs(exact_pairs, near_pairs).items()}
    return removed, {"exact_pairs": len(exact_pairs), "near_candidate_pairs": len(near_candidates),
                     "near_verified_pairs": len(near_pairs)}
