"""Hash-shuffle plumbing for the distributed dedup: integer document ids, partitioning, scalar-only gathers.

Every dedup step is a Ray task that takes numpy arrays from the previous step's
tasks and hands its own on, split into partitions, through the object store.
The driver only holds object references and gathers small scalars (counts),
through ``gather_scalars``, which refuses anything bigger: that is what keeps
driver memory independent of the corpus, and what the tests check.

A document's integer id is ``part file index << 32 | row``: its position in
the sorted list of stage-1 part files and its row in that file. It is fixed by
the committed stage-1 files alone (so reruns agree), it tells a task which
file holds the document's signature and key, and it is 8 bytes instead of a
string of tens.
"""

from __future__ import annotations

import pickle
from typing import Any, Callable

import numpy as np

ROW_BITS = 32
ROW_MASK = np.int64((1 << ROW_BITS) - 1)
MAX_SCALAR_BYTES = 512  # one gathered task result: a few counts, never an array
DRIVER_GATHER = {"calls": 0, "results": 0, "bytes": 0}  # what this process gathered; the tests read it


def doc_ids(file_index: int, rows: np.ndarray) -> np.ndarray:
    return (np.int64(file_index) << np.int64(ROW_BITS)) | rows.astype(np.int64)


def file_of(ids: np.ndarray) -> np.ndarray:
    return ids >> np.int64(ROW_BITS)


def row_of(ids: np.ndarray) -> np.ndarray:
    return ids & ROW_MASK


def mix(ids: np.ndarray) -> np.ndarray:
    """A well-spread uint64 of an int64 id: consecutive ids of one file must not land in one partition."""
    x = ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return x ^ (x >> np.uint64(29))


def split(part: np.ndarray, num: int, *columns: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    """Rows of ``columns`` grouped by ``part`` (values in [0, num)), one tuple of arrays per partition."""
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(num + 1))
    return [tuple(c[order[bounds[p]:bounds[p + 1]]] for c in columns) for p in range(num)]


def by_node(ids: np.ndarray, num: int) -> np.ndarray:
    return (mix(ids) % np.uint64(num)).astype(np.int64)


def by_file(ids: np.ndarray, num: int) -> np.ndarray:
    """Partition of the file that holds each id: the tasks that read files are grouped ``file % num``."""
    return file_of(ids) % num


def concat(parts: tuple | list, column: int, dtype: Any) -> np.ndarray:
    arrays = [p[column] for p in parts if len(p[column])]
    return np.concatenate(arrays) if arrays else np.empty(0, dtype=dtype)


def returns(parts: list) -> Any:
    """What a task with ``num_returns=len(parts)`` must return (Ray wants the bare object for one)."""
    return parts[0] if len(parts) == 1 else tuple(parts)


def submit(fn: Callable, num_returns: int, *args: Any) -> list:
    """Run ``fn`` as a 1-CPU Ray task; always a list of ``num_returns`` references."""
    import ray

    refs = ray.remote(fn).options(num_returns=num_returns, num_cpus=1).remote(*args)
    return [refs] if num_returns == 1 else list(refs)


def gather_scalars(refs: list) -> list:
    """``ray.get`` for results that must be small (counts): raises if one is not, and records the bytes."""
    import ray

    values = ray.get(refs)
    for value in values:
        size = len(pickle.dumps(value))
        if size > MAX_SCALAR_BYTES:
            raise AssertionError(f"a dedup task returned {size} bytes to the driver; only scalars may come back")
        DRIVER_GATHER["bytes"] += size
    DRIVER_GATHER["calls"] += 1
    DRIVER_GATHER["results"] += len(values)
    return values
