"""Cluster resolution: union-find keeps the smallest id; shuffle reduce emits star pairs."""

import numpy as np

from data_pipeline.dedup import EXACT, NEAR, UnionFind, reduce_partition, removals_from_pairs


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


def test_reduce_partition_emits_star_pairs_per_bucket():
    keys = np.array([5, 5, 5, 9, 9, 7], dtype=np.uint64)
    kinds = np.array([1, 1, 1, 1, 0, 1], dtype=np.int8)
    ids = np.array(["m", "c", "q", "a", "b", "z"], dtype=object)
    half = 3
    a, b, kind = reduce_partition((keys[:half], kinds[:half], ids[:half]), (keys[half:], kinds[half:], ids[half:]))
    got = sorted(zip(a.tolist(), b.tolist(), kind.tolist()))
    # bucket (5, near) -> c-m, c-q; key 9 appears once per kind so no pair; 7 is alone
    assert got == [("c", "m", 1), ("c", "q", 1)]
