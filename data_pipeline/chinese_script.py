"""Traditional vs Simplified Chinese: which one a text is written in, and conversion between them (OpenCC).

Mirrors of one page in the two scripts differ in most character 5-grams
(a third or more of common characters have distinct Traditional forms), so
MinHash over characters never pairs them, and language id calls both ``zh``.
Comparing both in one script (Simplified: OpenCC ``t2s``, character and
phrase tables) makes a mirror an exact or near duplicate again.

The script is told by counting characters that change under ``t2s`` (only
Traditional forms do) against those that change under ``s2t`` (only
Simplified forms do), over the first ``SAMPLE_CHARS`` characters.

Counting runs on a per-character table built once per process from OpenCC
itself (``script_table``): a numpy look-up instead of two OpenCC conversions
per document, which cost 0.19 CPU-s/MB of Chinese in stage 1. OpenCC's
phrase rules make a character's change depend on its neighbours, so the
table's counts can differ from in-context ones (by at most 19% of the
evidence over the embedded and benchmark documents, their Traditional
conversions and half-converted mixes). Only a clear verdict is taken from the
table (margin above ``CLEAR_MARGIN`` of the evidence); a close one is counted
in context with OpenCC, so labels equal the in-context ones on all of those
documents (tests/data_pipeline/test_zh_script.py).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

HANS = "hans"
HANT = "hant"
SAMPLE_CHARS = 4000
CLEAR_MARGIN = 0.5
"""Table verdicts are taken when |traditional - simplified| exceeds this share of their sum (observed drift <= 0.19)."""
MIN_EVIDENCE = 20
"""Fewer script-specific characters than this: count in context instead."""
TABLE_RANGES = ((0x80, 0xD800), (0xE000, 0x10000), (0x20000, 0x32400))
"""Code points the table covers: the BMP above ASCII without surrogates, and the CJK extension planes B-H."""
TRADITIONAL_ONLY, SIMPLIFIED_ONLY = 1, 2


@lru_cache(maxsize=4)
def converter(config: str):  # noqa: ANN201  (opencc.OpenCC has no stubs)
    """One OpenCC converter per process and config (building one reads its dictionaries)."""
    import opencc

    return opencc.OpenCC(config)


def _codes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


@lru_cache(maxsize=1)
def script_table() -> np.ndarray:
    """Per code point: TRADITIONAL_ONLY (changes under t2s alone, not s2t), SIMPLIFIED_ONLY (the reverse), or 0.

    One OpenCC call per direction over every covered character, newline
    separated so that no phrase spans two of them (0.3 s per process).
    """
    codes = np.concatenate([np.arange(lo, hi) for lo, hi in TABLE_RANGES])
    chars = [chr(c) for c in codes]
    changed = {}
    for config in ("t2s", "s2t"):
        converted = converter(config).convert("\n".join(chars)).split("\n")
        if len(converted) != len(chars):  # an OpenCC whose dictionaries join across newlines
            raise RuntimeError(f"OpenCC {config} changed the number of lines of the per-character table")
        changed[config] = np.fromiter((a != b for a, b in zip(converted, chars)), dtype=bool, count=len(chars))
    table = np.zeros(TABLE_RANGES[-1][1] + 1, dtype=np.uint8)  # the last entry (0) catches every higher code point
    table[codes[changed["t2s"] & ~changed["s2t"]]] = TRADITIONAL_ONLY
    table[codes[changed["s2t"] & ~changed["t2s"]]] = SIMPLIFIED_ONLY
    return table


def _verdict(trad: int, simp: int) -> str:
    return HANT if trad > simp else HANS


def table_counts(sample: str) -> tuple[int, int]:
    """(Traditional-only, Simplified-only) characters of ``sample`` by the per-character table."""
    table = script_table()
    flags = table[np.minimum(_codes(sample), len(table) - 1)]
    return int(np.count_nonzero(flags == TRADITIONAL_ONLY)), int(np.count_nonzero(flags == SIMPLIFIED_ONLY))


def detect_script(text: str) -> str:
    """HANT when more characters are Traditional-only than Simplified-only, else HANS (ties: Simplified).

    From the per-character table when its verdict is clear, else counted in context (``detect_script_in_context``).
    """
    sample = text[:SAMPLE_CHARS]
    trad, simp = table_counts(sample)
    if trad + simp >= MIN_EVIDENCE and abs(trad - simp) > CLEAR_MARGIN * (trad + simp):
        return _verdict(trad, simp)
    return detect_script_in_context(sample)


def in_context_counts(sample: str) -> tuple[int, int] | None:
    """(Traditional-only, Simplified-only) characters of ``sample`` by OpenCC's in-context conversions.

    Both conversions run once over the sample in OpenCC's C++ and are compared
    position by position in numpy; None when a phrase rule changed the length,
    so positions no longer line up.
    """
    as_simp, as_trad = converter("t2s").convert(sample), converter("s2t").convert(sample)
    if not len(as_simp) == len(sample) == len(as_trad):
        return None
    orig, s, t = _codes(sample), _codes(as_simp), _codes(as_trad)
    return int(np.count_nonzero((s != orig) & (t == orig))), int(np.count_nonzero((t != orig) & (s == orig)))


def detect_script_in_context(text: str) -> str:
    """``detect_script`` counted in context, phrase rules included (the per-character table where lengths differ)."""
    sample = text[:SAMPLE_CHARS]
    counts = in_context_counts(sample)
    return _verdict(*(counts if counts is not None else table_counts(sample)))


def to_simplified(text: str) -> str:
    return converter("t2s").convert(text)


def to_traditional(text: str) -> str:
    return converter("s2t").convert(text)
