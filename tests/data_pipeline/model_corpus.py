"""Real documents of the embedded corpus and unreadable copies of them, for the model-stage tests."""

from __future__ import annotations

import random
import re

from data_pipeline.model_text import tokens

CJK = re.compile("[\u3400-\u4dbf\u4e00-\u9fff]")

from .conftest import planted, read_corpus


def real_docs(lang: str, n: int, skip: int = 0) -> list[str]:
    """``n`` real (not planted) documents of ``lang`` from the embedded corpus, after the first ``skip``."""
    truth = planted()
    names = {"en": ["en_docs"], "zh": ["zh_docs", "zh_classical"]}[lang]
    docs = [r["text"] for name in names for r in read_corpus(name) if r["id"] not in truth and len(r["text"]) > 300]
    return docs[skip:skip + n]


def scramble(text: str, seed: int = 0, whole: bool = False, punct: bool = False) -> str:
    """The text with its tokens shuffled within each line (``whole``: across the document, then cut into
    lines of 30): the same words, no fluency. Punctuation is kept as tokens in Chinese text or with
    ``punct``; otherwise left out (split off, it would fail the quality stage's word-length rules)."""
    rng = random.Random(seed)
    units = lambda s: tokens(s) if punct or CJK.search(s) else re.findall(r"\w+", s)  # noqa: E731
    if whole:
        toks = units(text)
        rng.shuffle(toks)
        return "\n".join(" ".join(toks[i:i + 30]) for i in range(0, len(toks), 30))
    lines = []
    for line in text.split("\n"):
        toks = units(line)
        rng.shuffle(toks)
        lines.append(" ".join(toks))
    return "\n".join(lines)
