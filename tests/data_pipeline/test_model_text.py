"""model_text's fast paths give exactly what the plain per-character, per-line definitions give.

The models were trained on this tokenisation, so a faster implementation must not move a single token:
accents are stripped by a numpy table look-up instead of a Python loop, and the perplexity stage reuses
the classifier's whole-text normalisation instead of normalising line by line.
"""

from __future__ import annotations

import random
import unicodedata

import pytest

from data_pipeline import model_text as mt


def reference_normalize(text: str) -> str:
    """The definition: drop a combining mark (in NFD) whose predecessor is ASCII, character by character."""
    text = text.lower().translate(mt._PUNCT)
    if not text.isascii():
        decomposed = unicodedata.normalize("NFD", text)
        kept = (c for i, c in enumerate(decomposed)
                if not (unicodedata.combining(c) and i and decomposed[i - 1].isascii()))
        text = unicodedata.normalize("NFC", "".join(kept))
    return mt._DIGIT.sub("0", text)


def reference_lm_lines(text: str, max_chars: int | None) -> list[list[str]]:
    text = text if max_chars is None else text[:max_chars]
    return [t for t in (mt.tokens(reference_normalize(line)) for line in text.split("\n")) if t]


def reference_classifier_line(text: str, max_chars: int | None) -> str:
    text = text if max_chars is None else text[:max_chars]
    return " ".join(mt.tokens(reference_normalize(text)))


EDGES = ["Café 2019\nnaïve", "\u0301abc\n\u0301x", "a\n\u0301b", "e\u0301\n\u0301\u0302", "ΟΔΟΣ\nΣ ΑΣ\nx",
         "中文，测试。\n第二行１２３", "한국어 \u1100\u1161\u11a8\nkana \u304b\u3099", "x\u20d0\n\U0001d165", ""]


def random_texts(n: int) -> list[str]:
    rng = random.Random(0)
    pool = [chr(c) for c in [*range(32, 0x250), *range(0x300, 0x370), *range(0x4e00, 0x4e40),
                             0x1d165, 0x20d0, 0x3099, 0x304b, 0xac00, 0x1100, 0x1161, 0x11a8, 0x3a3, 0x130,
                             0x2026, 0x2014, 0xff11, 0x663]] + ["\n"] * 30
    return ["".join(rng.choice(pool) for _ in range(rng.randint(0, 60))) for _ in range(n)]


@pytest.mark.parametrize("max_chars", [None, 10, 25])
def test_fast_paths_match_the_definitions(max_chars):
    for text in EDGES + random_texts(3000):
        assert mt.normalize(text) == reference_normalize(text), repr(text)
        # stage order: the classifier first, then the language model on the same text object
        assert mt.classifier_line(text, max_chars) == reference_classifier_line(text, max_chars), repr(text)
        assert mt.lm_lines(text, max_chars) == reference_lm_lines(text, max_chars), repr(text)
        limit = None if max_chars is None else 2 * max_chars
        assert mt.lm_lines(text, limit) == reference_lm_lines(text, limit), repr(text)
