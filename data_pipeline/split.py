"""Deterministic held-out split by a hash of the document id.

Hashing the id (not drawing random numbers) makes the split the same on every
rerun, machine and worker count, and lets a later job tell whether a document
is held out from its id alone. The split is carved after cleaning and dedup,
so no held-out document has a duplicate left in the training shards.
"""

from __future__ import annotations

import numpy as np
import xxhash

_SCALE = float(1 << 64)


def heldout_mask(ids: list[str], fraction: float, seed: int) -> np.ndarray:
    """True where the document goes to the held-out split (about ``fraction`` of ids)."""
    if fraction <= 0:
        return np.zeros(len(ids), dtype=bool)
    values = np.fromiter((xxhash.xxh64_intdigest(i.encode("utf-8", "surrogatepass"), seed=seed) / _SCALE for i in ids),
                         dtype=np.float64, count=len(ids))
    return values < fraction
