"""Split text into units (words or characters) and hash n-grams of them with numpy.

Quality rules and MinHash both look at n-grams. Hashing each unit once and
combining the unit hashes into n-gram hashes with vectorised arithmetic keeps
the per-n-gram cost out of the Python interpreter, which is where a pure
Python pipeline spends its time. Words are hashed with xxhash and characters
with a splitmix64 mix of their code points: both are identical in every
process, unlike Python's ``hash``, which is salted per process.
"""

from __future__ import annotations

import re

import numpy as np
import xxhash

WORD = re.compile(r"\w+", re.UNICODE)
_MIX = np.uint64(0x9E3779B97F4A7C15)
_MIX2 = np.uint64(0xBF58476D1CE4E5B9)
_MIX3 = np.uint64(0x94D049BB133111EB)
_MASK32 = np.uint64(0xFFFFFFFF)


def words(text: str) -> list[str]:
    """Lower-cased word tokens without punctuation: what near-duplicate detection should compare."""
    return WORD.findall(text.lower())


def char_codes(text: str) -> np.ndarray:
    """Code points of the non-space characters, lower-cased: the units for zh and ja, as an array.

    ``str.split()`` drops exactly the characters ``str.isspace`` calls space, in
    C, and UTF-32 turns the rest into code points without a Python loop.
    """
    joined = "".join(text.lower().split())
    return np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)


def mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a well-mixed uint64 per value (a code point is a hash key, not a hash)."""
    with np.errstate(over="ignore"):
        z = values + _MIX
        z = (z ^ (z >> np.uint64(30))) * _MIX2
        z = (z ^ (z >> np.uint64(27))) * _MIX3
        return z ^ (z >> np.uint64(31))


def unit_ids(units: list[str]) -> tuple[np.ndarray, list[str]]:
    """(per-unit index into the distinct units, distinct units): comparisons inside one document.

    ``dict.fromkeys`` and ``map`` keep the per-unit work in C (first-seen order,
    as a setdefault loop would give, at a third of its cost).
    """
    index = dict.fromkeys(units)
    for i, unit in enumerate(index):
        index[unit] = i
    ids = np.fromiter(map(index.__getitem__, units), dtype=np.uint64, count=len(units))
    return ids, list(index)


def unit_hashes(units: list[str]) -> np.ndarray:
    """uint64 xxhash per unit, the same in every process; each distinct unit is hashed once."""
    ids, distinct = unit_ids(units)
    table = np.fromiter((xxhash.xxh64_intdigest(u.encode("utf-8", "surrogatepass")) for u in distinct),
                        dtype=np.uint64, count=len(distinct))
    return table[ids.astype(np.int64)] if len(ids) else np.empty(0, dtype=np.uint64)


def ngram_hashes(hashes: np.ndarray, n: int) -> np.ndarray:
    """uint64 hash of every run of n consecutive units (empty when fewer than n units)."""
    count = len(hashes) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        acc = np.zeros(count, dtype=np.uint64)
        for k in range(n):  # order-sensitive combination: rotate-multiply-add
            acc = (acc * _MIX) ^ hashes[k:k + count]
            acc ^= acc >> np.uint64(29)
    return acc


def to_uint32(h: np.ndarray) -> np.ndarray:
    """Fold 64-bit hashes into 32 bits (MinHash works on 32-bit values, like datasketch)."""
    return ((h ^ (h >> np.uint64(32))) & _MASK32).astype(np.uint64)
