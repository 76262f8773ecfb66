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


def detect_script(text: str) -> str:
    """HANT when more characters are Traditional-only than Simplified-only, else HANS (ties: Simplified)."""
    trad = simp = 0
    for ch in text[:SAMPLE_CHARS]:
        if "\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff":
            to_simp, to_trad = _changes(ch)
            trad += to_simp and not to_trad
            simp += to_trad and not to_simp
    return HANT if trad > simp else HANS


def to_simplified(text: str) -> str:
    return converter("t2s").convert(text)


def to_traditional(text: str) -> str:
    return converter("s2t").convert(text)
