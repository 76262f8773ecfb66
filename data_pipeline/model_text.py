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
import unicodedata

CJK_LANGS = ("zh", "ja")
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
# a CJK character alone, a run of letters/digits, or one other non-space character
_TOKEN = re.compile(f"[{_CJK}]|[^\\W{_CJK}]+|[^\\w\\s]", re.UNICODE)
_DIGIT = re.compile(r"\d")
_PUNCT = str.maketrans({"，": ",", "。": ".", "、": ",", "“": '"', "”": '"', "‘": "'", "’": "'", "：": ":",
                        "；": ";", "！": "!", "？": "?", "（": "(", "）": ")", "「": '"', "」": '"', "『": '"',
                        "』": '"', "《": '"', "》": '"', "【": "[", "】": "]",
                        "…": "...", "—": "-", "–": "-"})


def normalize(text: str) -> str:
    """CCNet-style: lowercase, digits to 0, accents off Latin letters, typographic punctuation to ASCII."""
    text = text.lower().translate(_PUNCT)
    if not text.isascii():
        decomposed = unicodedata.normalize("NFD", text)
        # strip combining marks only after a Latin base letter: NFD of Korean or Japanese kana is not reversible
        kept = (c for i, c in enumerate(decomposed)
                if not (unicodedata.combining(c) and i and decomposed[i - 1].isascii()))
        text = unicodedata.normalize("NFC", "".join(kept))
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
