"""Distributed connected components agree with a plain union-find; dedup's driver gathers only counts."""

import ast
import inspect
import random

import numpy as np
import pytest

from data_pipeline import components, dedup, dedup_buckets, dedup_verify, removal_set
from data_pipeline.shuffle import DRIVER_GATHER, MAX_SCALAR_BYTES, by_node


def union_find_roots(edges: list[tuple[int, int]]) -> dict[int, int]:
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {x: find(x) for x in parent}


def distributed_roots(ray, edges: list[tuple[int, int]], partitions: int, pieces: int) -> tuple[dict[int, int], int]:
    arr = np.array(edges, dtype=np.int64).reshape(-1, 2)
    refs = [ray.put((chunk[:, 0].copy(), chunk[:, 1].copy())) for chunk in np.array_split(arr, pieces)]
    links, rounds = components.connected_components(refs, partitions)
    out: dict[int, int] = {}
    for i in range(partitions):
        for lk in links:
            member, root = ray.get(lk[i])
            assert (by_node(member, partitions) == i).all()  # split as promised
            for m, r in zip(member.tolist(), root.tolist()):
                assert m not in out  # each member once
                out[m] = r
    return out, rounds


def random_graphs(seed: int):
    rng = random.Random(seed)
    # sparse random graph with big ids (as file << 32 | row), many small components
    ids = [rng.randrange(1 << 40) for _ in range(3000)]
    yield [(rng.choice(ids), rng.choice(ids)) for _ in range(2000)]
    # a long path in shuffled id order (large diameter) plus self-loops and repeated edges
    path = rng.sample(range(10_000), 400)
    edges = list(zip(path, path[1:])) + [(5, 5), (path[0], path[1])] * 3
    rng.shuffle(edges)
    yield edges
    # dense clusters (a duplicate cluster of a popular page)
    yield [(rng.randrange(50), rng.randrange(50)) for _ in range(600)] + [(100 + i, 100) for i in range(30)]


@pytest.mark.parametrize("seed", [0, 1])
def test_components_match_union_find_on_random_graphs(ray_cluster, seed):
    for graph in random_graphs(seed):
        want = {m: r for m, r in union_find_roots(graph).items() if any(x == m or y == m for x, y in graph if x != y)}
        got, rounds = distributed_roots(ray_cluster, graph, partitions=3, pieces=4)
        assert got == want
        assert rounds <= 20


def test_empty_graph(ray_cluster):
    got, rounds = distributed_roots(ray_cluster, [], partitions=2, pieces=1)
    assert got == {} and rounds == 1


def test_driver_gathers_the_same_whatever_the_corpus_size(corpus_run, tmp_path):
    """Half the demo corpus or all of it: the same number of results, and bytes bounded by counts, come back."""
    from data_pipeline.config import plain

    from .conftest import CORPUS, load_config
    from .test_dedup_equivalence import part_files_of

    out, _ = corpus_run
    pattern = str(CORPUS / "*.jsonl.gz")
    cfg = plain(load_config(input=pattern, output=str(out), **{"dedup.partition_rows": 1}))  # 8 partitions
    files = part_files_of(out, pattern)
    seen = []
    for subset in (files[: len(files) // 2], files):
        before = dict(DRIVER_GATHER)
        stats = dedup.find_duplicates(subset, cfg, tmp_path / str(len(subset)))
        seen.append((DRIVER_GATHER["calls"] - before["calls"] - stats["cc_rounds"],
                     DRIVER_GATHER["results"] - before["results"] - 2 * 8 * stats["cc_rounds"],
                     DRIVER_GATHER["bytes"] - before["bytes"], stats))
    (calls_half, results_half, bytes_half, half), (calls_all, results_all, bytes_all, full) = seen
    assert full["near_verified_pairs"] > half["near_verified_pairs"] > 0  # the work did grow
    assert (calls_half, results_half) == (calls_all, results_all) == (1, 4 * 8)
    for size, stats in ((bytes_half, half), (bytes_all, full)):  # small ints and tuples of them: ~5-30 bytes each
        assert size <= 32 * (4 * 8 + 2 * 8 * stats["cc_rounds"]) < MAX_SCALAR_BYTES * 4 * 8


def _calls(fn) -> set[str]:
    """Dotted names of everything ``fn``'s body calls."""
    names = set()
    for node in ast.walk(ast.parse(inspect.getsource(fn).lstrip())):
        if isinstance(node, ast.Call):
            names.add(ast.unparse(node.func))
    return names


def test_driver_only_gathers_scalars_structurally():
    """Nothing in the dedup path calls ray.get/ray.wait except ``gather_scalars``, which bounds each result."""
    for module in (components, dedup_buckets, dedup_verify, removal_set):
        source = inspect.getsource(module)
        assert "ray.get" not in source and "ray.wait" not in source and "ray.put" not in source, module.__name__
    calls = _calls(dedup.find_duplicates) | _calls(components.connected_components)
    assert "gather_scalars" in calls
    assert not {c for c in calls if c.startswith("ray.")}
