"""Near-duplicate verification on the full MinHash signature, inside Ray tasks.

LSH with few rows per band finds low-similarity pairs too (that is what buys
recall at 20-30% edits); checking the full signature removes chance
collisions, against the stricter threshold of the two documents' languages
(``dedup.threshold``, see ``threshold_for``).

The signatures are joined onto the candidate pairs where they are stored: the
integer id names the part file and row that holds a document, so a task per
file group reads the signature column of its own files once. Two hops: the
pairs arrive split by the file of their first document, pick up its
signature, move on split by the file of their second and are checked there.
Shuffling each document's 576-byte signature with every one of its 48 band
rows instead would move 48 copies of every signature, candidate or not; this
way only candidates travel, with one or two signatures each.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from data_pipeline.dedup_buckets import unique_pairs
from data_pipeline.shuffle import by_file, concat, file_of, returns, row_of, split


def threshold_for(lang: str, threshold: Any) -> float:
    """A number applies to every language; a mapping is per language, with ``default`` for the rest."""
    if isinstance(threshold, (int, float)):
        return float(threshold)
    return float(threshold[lang] if lang in threshold else threshold["default"])


def lookup_signatures(files: dict[int, str], ids: np.ndarray, num_perm: int,
                      threshold: Any) -> tuple[np.ndarray, np.ndarray]:
    """(signatures, thresholds) of ``ids``, all of which are in ``files`` ({part file index: path})."""
    import pyarrow.parquet as pq

    sigs = np.empty((len(ids), num_perm), dtype=np.uint32)
    needs = np.empty(len(ids), dtype=np.float64)
    which = file_of(ids)
    for index in np.unique(which):
        at = np.flatnonzero(which == index)
        table = pq.read_table(files[int(index)], columns=["lang", "signature"])
        rows = pa.array(row_of(ids[at]))
        flat = pa.compute.list_flatten(table.column("signature").take(rows)).to_numpy(zero_copy_only=False)
        sigs[at] = flat.reshape(len(at), num_perm)
        langs = np.asarray(table.column("lang").take(rows).to_pylist(), dtype=object)
        for lang in set(langs.tolist()):
            needs[at[langs == lang]] = threshold_for(lang, threshold)
    return sigs, needs


def attach_first(files: dict[int, str], num_perm: int, threshold: Any, num_out: int, *parts: tuple):
    """Pairs whose first document is in ``files`` -> with its signature, split by the file of the second.

    Returns ``num_out`` parts and, last, the number of distinct candidate pairs here (every copy of a
    pair arrives in this one task, since the split was by its first document).
    """
    a, b = unique_pairs(concat(parts, 0, np.int64), concat(parts, 1, np.int64))
    sig_a, need_a = lookup_signatures(files, a, num_perm, threshold)
    return returns(split(by_file(b, num_out), num_out, a, b, sig_a, need_a) + [len(a)])


def verify_second(files: dict[int, str], num_perm: int, threshold: Any, *parts: tuple):
    """Pairs whose second document is in ``files`` -> the verified ones ``(a, b)`` and their count."""
    a, b = concat(parts, 0, np.int64), concat(parts, 1, np.int64)
    sig_a = np.concatenate([p[2] for p in parts]) if parts else np.empty((0, num_perm), np.uint32)
    need_a = concat(parts, 3, np.float64)
    sig_b, need_b = lookup_signatures(files, b, num_perm, threshold)
    similar = (sig_a == sig_b).mean(axis=1) >= np.maximum(need_a, need_b) if len(a) else np.zeros(0, bool)
    return returns([(a[similar], b[similar]), int(similar.sum())])
