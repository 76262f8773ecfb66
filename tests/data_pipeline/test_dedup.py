"""Cluster resolution: union-find keeps the smallest id; the shuffle reduce emits candidate pairs."""

import numpy as np

from data_pipeline.dedup_legacy import (ALL_PAIRS_MAX_BUCKET, EXACT, NEAR, UnionFind, reduce_partition, removals_from_pairs,
                                        threshold_for)


def test_union_find_root_is_smallest_id_whatever_the_order():
    for pairs in ([("d", "c"), ("c", "b"), ("z", "b")], [("b", "z"), ("b", "c"), ("c", "d")]):
        uf = UnionFind()
        for a, b in pairs:
            uf.union(a, b)
        assert {uf.find(x) for x in "bcdz"} == {"b"}


def test_each_cluster_keeps_exactly_one_with_honest_reasons():
    exact = [("a", "b"), ("b", "c")]  # a, b, c identical
    near = [("c", "x"), ("y", "z")]  # x is close to c (so to a); y and z are close to each other
    removed = removals_from_pairs(exact, near)
    assert removed == {"b": EXACT, "c": EXACT, "x": NEAR, "z": NEAR}


def test_reduce_partition_emits_all_pairs_of_small_buckets():
    keys = np.array([5, 5, 5, 9, 9, 7], dtype=np.uint64)
    kinds = np.array([1, 1, 1, 1, 0, 1], dtype=np.int8)
    ids = np.array(["m", "c", "q", "a", "b", "z"], dtype=object)
    half = 3
    a, b, kind = reduce_partition((keys[:half], kinds[:half], ids[:half]), (keys[half:], kinds[half:], ids[half:]))
    got = sorted(zip(a.tolist(), b.tolist(), kind.tolist()))
    # bucket (5, near) -> every pair of c, m, q; key 9 appears once per kind so no pair; 7 is alone
    assert got == [("c", "m", 1), ("c", "q", 1), ("m", "q", 1)]


def test_reduce_partition_emits_a_star_for_a_large_bucket():
    size = ALL_PAIRS_MAX_BUCKET + 1
    members = [f"d{i:03d}" for i in range(size)]
    keys = np.full(size + 1, 3, dtype=np.uint64)
    kinds = np.ones(size + 1, dtype=np.int8)
    ids = np.array(members[::-1] + ["d005"], dtype=object)  # d005 twice: one band repeated
    a, b, _ = reduce_partition((keys, kinds, ids))
    assert sorted(set(zip(a.tolist(), b.tolist()))) == [("d000", m) for m in members[1:]]  # the caller dedups pairs


def test_verification_threshold_is_per_language():
    threshold = {"default": 0.1, "zh": 0.25}
    assert threshold_for("en", threshold) == 0.1
    assert threshold_for("zh", threshold) == 0.25
    assert threshold_for("zh", 0.3) == 0.3  # a plain number applies to every language
