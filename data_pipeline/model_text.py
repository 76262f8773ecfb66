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

    0.2 s, paid by the first non-ASCII document a worker sees.
    """
    size = sys.maxunicode + 1
    return np.fromiter((unicodedata.combining(chr(c)) != 0 for c in range(size)), dtype=bool, count=size)


def _strip_accents(decomposed: str) -> str:
    """Drop each combining mark that directly follows an ASCII character (an accent on a Latin letter).

    A table look-up over the code points in numpy: the same marks a per-character ``combining(c)`` loop
    drops, without a Python step per character, which cost ~0.1 CPU-s per MB of Chinese (every
    character non-ASCII), twice per document (classifier and language model).
    """
    codes = np.frombuffer(decomposed.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    strip = _combining_table()[codes[1:]] & (codes[:-1] < 128)
    if not strip.any():
        return decomposed
    keep = np.ones(len(codes), dtype=bool)
    keep[1:] = ~strip
    return codes[keep].tobytes().decode("utf-32-le", "surrogatepass")


def normalize(text: str) -> str:
    """CCNet-style: lowercase, digits to 0, accents off Latin letters, typographic punctuation to ASCII."""
    text = text.lower().translate(_PUNCT)
    if not text.isascii():
        # strip combining marks only after a Latin base letter: NFD of Korean or Japanese kana is not reversible
        text = unicodedata.normalize("NFC", _strip_accents(unicodedata.normalize("NFD", text)))
    return _DIGIT.sub("0", text)


def tokens(line: str) -> list[str]:
    """Tokens of one normalised line: CJK characters one by one, other words whole, punctuation apart."""
    return _TOKEN.findall(line)


def lm_lines(text: str, max_chars: int | None = None) -> list[list[str]]:
    """The document as the language model sees it: one token list per non-blank line (CCNet scores lines)."""
    if max_chars is not None:
        text = text[:max_chars]
    return [toks for toks in (tokens(normalize(line)) for line in text.split("\n")) if toks]


def classifier_line(text: str, max_chars: int | None = None) -> str:
    """The document as fastText sees it: one line of space-separated tokens (fastText splits on spaces)."""
    if max_chars is not None:
        text = text[:max_chars]
    return " ".join(tokens(normalize(text)))
