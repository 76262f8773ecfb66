"""How a document becomes the token sequences the quality classifier and the language model see.

One module for both so that training (data_pipeline/tools/) and scoring (the
stages) cannot drift apart: a model trained on one tokenisation and queried
with another scores everything as unknown. Chinese has no spaces and the
pipeline carries no segmenter, so every CJK character is a token (the
character n-grams a model builds on top play the role of words); other text
is lowercased words with punctuation split off. Following CCNet
(Wenzek et al. 2020, ``text_normalizer.normalize``) digits become ``0``,
accents are stripped from Latin letters and typographic punctuation is mapped
to ASCII, so that "Café 2019" and "cafe 1984" share statistics.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from functools import lru_cache

import numpy as np

CJK_LANGS = ("zh", "ja")
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
# a CJK character alone, a run of letters/digits, or one other non-space character
_TOKEN = re.compile(f"[{_CJK}]|[^\\W{_CJK}]+|[^\\w\\s]", re.UNICODE)
_DIGIT = re.compile(r"\d")
_PUNCT = str.maketrans({"，": ",", "。": ".", "、": ",", "“": '"', "”": '"', "‘": "'", "’": "'", "：": ":",
                        "；": ";", "！": "!", "？": "?", "（": "(", "）": ")", "「": '"', "」": '"', "『": '"',
                        "』": '"', "《": '"', "》": '"', "【": "[", "】": "]",
                        "…": "...", "—": "-", "–": "-"})


@lru_cache(maxsize=1)
def _combining_table() -> np.ndarray:
    """bool per code point: a non-zero canonical combining class (``unicodedata.combining``), built once per process.

    Paid by the first non-ASCII document a worker sees: 0.06 s as a list of the ~900 marks, against
    0.12 s for a generator feeding ``np.fromiter`` one bool per code point.
    """
    table = np.zeros(sys.maxunicode + 1, dtype=bool)
    table[[c for c in range(sys.maxunicode + 1) if unicodedata.combining(chr(c))]] = True
    return table


def _strip_accents(decomposed: str) -> tuple[str, bool]:
    """Drop each combining mark that directly follows an ASCII character (an accent on a Latin letter).

    A table look-up over the code points in numpy: the same marks a per-character ``combining(c)`` loop
    drops, without a Python step per character, which cost ~0.1 CPU-s per MB of Chinese (every
    character non-ASCII), twice per document (classifier and language model). Also says whether a
    mark right after a newline was dropped: the one place where normalising a text whole and line by
    line differ (a line's first character has no predecessor).
    """
    codes = np.frombuffer(decomposed.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    strip = _combining_table()[codes[1:]] & (codes[:-1] < 128)
    if not strip.any():
        return decomposed, False
    keep = np.ones(len(codes), dtype=bool)
    keep[1:] = ~strip
    return codes[keep].tobytes().decode("utf-32-le", "surrogatepass"), bool((strip & (codes[:-1] == 10)).any())


# The last document ``classifier_line`` normalised whole: (the text object, its normalised form), kept
# when normalising it line by line gives the same lines. The perplexity stage then reuses it instead of
# normalising the same text again (stages run one document at a time, classifier first).
_LAST: list = [None, None]


def _normalize(text: str) -> tuple[str, bool]:
    """``normalize`` and whether it differs from normalising ``text`` line by line (see ``_strip_accents``).

    Every other step maps characters within a line: lower-casing (a newline ends a word for the final
    sigma rule), the punctuation table, NFD/NFC (a newline is a starter and composes with nothing),
    digits. So ``normalize(text).split("\n")`` equals ``[normalize(line) for line in text.split("\n")]``
    unless this returns True.
    """
    text = text.lower().translate(_PUNCT)
    differs = False
    if not text.isascii():
        # strip combining marks only after a Latin base letter: NFD of Korean or Japanese kana is not reversible
        decomposed, differs = _strip_accents(unicodedata.normalize("NFD", text))
        text = unicodedata.normalize("NFC", decomposed)
    return _DIGIT.sub("0", text), differs


def normalize(text: str) -> str:
    """CCNet-style: lowercase, digits to 0, accents off Latin letters, typographic punctuation to ASCII."""
    return _normalize(text)[0]


def tokens(line: str) -> list[str]:
    """Tokens of one normalised line: CJK characters one by one, other words whole, punctuation apart."""
    return _TOKEN.findall(line)


def lm_lines(text: str, max_chars: int | None = None) -> list[list[str]]:
    """The document as the language model sees it: one token list per non-blank line (CCNet scores lines)."""
    if max_chars is not None:
        text = text[:max_chars]  # the same object when the text is shorter (CPython): then the cache can hit
    if text is _LAST[0]:
        lines = _LAST[1].split("\n")
    else:
        whole, differs = _normalize(text)
        lines = whole.split("\n") if not differs else [normalize(line) for line in text.split("\n")]
    return [toks for toks in map(tokens, lines) if toks]


def classifier_line(text: str, max_chars: int | None = None) -> str:
    """The document as fastText sees it: one line of space-separated tokens (fastText splits on spaces)."""
    if max_chars is not None:
        text = text[:max_chars]
    whole, differs = _normalize(text)
    _LAST[:] = (None, None) if differs else (text, whole)
    return " ".join(tokens(whole))
