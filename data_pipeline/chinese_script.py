"""Traditional vs Simplified Chinese: which one a text is written in, and conversion between them (OpenCC).

Mirrors of one page in the two scripts differ in most character 5-grams
(a third or more of common characters have distinct Traditional forms), so
MinHash over characters never pairs them, and language id calls both ``zh``.
Comparing both in one script (Simplified: OpenCC ``t2s``, character and
phrase tables) makes a mirror an exact or near duplicate again.

The script is told by counting characters that change under ``t2s`` (only
Traditional forms do) against those that change under ``s2t`` (only
Simplified forms do), over the first ``SAMPLE_CHARS`` characters.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

HANS = "hans"
HANT = "hant"
SAMPLE_CHARS = 4000


@lru_cache(maxsize=4)
def converter(config: str):  # noqa: ANN201  (opencc.OpenCC has no stubs)
    """One OpenCC converter per process and config (building one reads its dictionaries)."""
    import opencc

    return opencc.OpenCC(config)


@lru_cache(maxsize=65536)
def _changes(ch: str) -> tuple[bool, bool]:
    """(changes under t2s, changes under s2t) for one character; a few thousand distinct ones in practice."""
    return converter("t2s").convert(ch) != ch, converter("s2t").convert(ch) != ch


def _codes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def detect_script(text: str) -> str:
    """HANT when more characters are Traditional-only than Simplified-only, else HANS (ties: Simplified).

    Both conversions run once over the sample in OpenCC's C++ and are compared
    position by position in numpy; only when a phrase rule changed the length
    does it fall back to a (cached) per-character look-up.
    """
    sample = text[:SAMPLE_CHARS]
    as_simp, as_trad = converter("t2s").convert(sample), converter("s2t").convert(sample)
    if len(as_simp) == len(sample) == len(as_trad):
        orig, s, t = _codes(sample), _codes(as_simp), _codes(as_trad)
        trad = int(np.count_nonzero((s != orig) & (t == orig)))
        simp = int(np.count_nonzero((t != orig) & (s == orig)))
        return HANT if trad > simp else HANS
    trad = simp = 0
    for ch in sample:
        if "\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff":
            to_simp, to_trad = _changes(ch)
            trad += to_simp and not to_trad
            simp += to_trad and not to_simp
    return HANT if trad > simp else HANS


def to_simplified(text: str) -> str:
    return converter("t2s").convert(text)


def to_traditional(text: str) -> str:
    return converter("s2t").convert(text)
