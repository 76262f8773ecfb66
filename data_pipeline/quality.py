"""Heuristic quality filters: Gopher repetition and quality, C4, FineWeb, and CJK rules.

Each rule is one config key in the language's block of ``quality`` (``zh``,
``ja`` or ``default``); a key that is absent switches its rule off. That keeps
the thresholds visible and per language: the published values were tuned on
English web text, and Chinese text has no spaces, so "words" there are
characters and the length rules count characters.

Rules are checked in a fixed order and the first one that fails names the
drop reason, so the report tells *why* a document went, not just that it did.
"""

from __future__ import annotations

import re
from operator import methodcaller
from typing import Any

import numpy as np

from data_pipeline.text_units import ngram_hashes, unit_ids

CJK_CHAR = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")
# zh/ja units: each CJK character alone, each run of other non-space characters as one unit,
# so an embedded shell command counts as words rather than as dozens of "characters".
CJK_UNIT = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]|[^\\s\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]+")
CJK_PUNCT = re.compile("[，。！？、；：“”‘’「」『』《》（）【】…,.!?;:]")
TERMINAL_PUNCT = (".", "!", "?", '"', "'", "…", "。", "！", "？", "」", "』", ":", ")")
BULLETS = ("•", "-", "*", "‣", "●", "◦", "▪", "–")
POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies",
          "accept all cookies", "all rights reserved", "javascript", "powered by wordpress",
          "版权所有", "隐私政策", "保留所有权利", "点击这里")
POLICY_PATTERN = re.compile("|".join(re.escape(p) for p in POLICY))
# a whitespace-delimited word containing a letter (\\w minus digits and underscore): one regex pass
# over the text instead of a Python loop over its characters
ALPHA_WORD = re.compile(r"(?<!\S)\S*?[^\W\d_]")
WORD_EDGE_PUNCT = ".,;:!?\"'()[]"
STOP_WORDS = {
    "en": {"the", "be", "to", "of", "and", "that", "have", "with", "is", "in", "a", "it", "for", "on"},
    "de": {"der", "die", "das", "und", "ist", "nicht", "mit", "ein", "eine", "zu", "den", "von", "sie"},
    "fr": {"le", "la", "les", "de", "des", "et", "est", "un", "une", "que", "pour", "dans", "pas"},
    "es": {"el", "la", "los", "las", "de", "y", "que", "en", "un", "una", "es", "por", "para", "con"},
}
SIGNALS = ("units", "mean_word_length", "alpha_words", "dup_line_fraction", "dup_line_char_fraction",
           "top_ngram_char_fraction", "dup_ngram_char_fraction", "line_punct_ratio", "short_line_ratio",
           "cjk_share", "cjk_punct_ratio")


def block_for(lang: str, cfg: Any) -> Any:
    """The thresholds that apply to ``lang``: its own block, else ``default``."""
    return cfg[lang] if lang in cfg else cfg["default"]


def _dup_fractions(items: list[str]) -> tuple[float, float]:
    """(share of items that repeat an earlier item, share of characters in those repeats)."""
    items = [it for it in items if it.strip()]
    if not items:
        return 0.0, 0.0
    seen: set[str] = set()
    dup_items = dup_chars = 0
    for it in items:
        if it in seen:
            dup_items += 1
            dup_chars += len(it)
        else:
            seen.add(it)
    total_chars = sum(len(it) for it in items)
    return dup_items / len(items), dup_chars / max(total_chars, 1)


def _top_ngram_char_fraction(hashes: np.ndarray, lengths: np.ndarray, n: int) -> float:
    """Characters covered by the most frequent n-gram, over all characters (Gopher)."""
    grams = ngram_hashes(hashes, n)
    if len(grams) == 0:
        return 0.0
    values, first, counts = np.unique(grams, return_index=True, return_counts=True)
    best = int(np.argmax(counts))
    if counts[best] < 2:
        return 0.0
    start = int(first[best])
    return min(1.0, float(lengths[start:start + n].sum() * counts[best] / max(lengths.sum(), 1)))


def _dup_ngram_char_fraction(hashes: np.ndarray, lengths: np.ndarray, n: int) -> float:
    """Characters inside n-grams that occur more than once, over all characters (Gopher)."""
    grams = ngram_hashes(hashes, n)
    if len(grams) == 0:
        return 0.0
    _, inverse, counts = np.unique(grams, return_inverse=True, return_counts=True)
    starts = np.flatnonzero(counts[inverse] > 1)
    if len(starts) == 0:
        return 0.0
    cover = np.zeros(len(hashes) + 1, dtype=np.int64)
    np.add.at(cover, starts, 1)
    np.add.at(cover, starts + n, -1)
    covered = np.cumsum(cover[:-1]) > 0
    return float(lengths[covered].sum() / max(lengths.sum(), 1))


def _dup_ngram_fractions(hashes: np.ndarray, lengths: np.ndarray, limits: dict) -> dict:
    """Duplicated n-gram fractions for increasing n, stopping once no larger n can fail.

    The fraction can only shrink as n grows (a character inside a repeated
    10-gram is inside a repeated 5-gram), so once it is below every remaining
    limit the rest are skipped: most documents need one ``np.unique``, not six.
    """
    out: dict = {}
    sizes = sorted(limits, key=int)
    for i, n in enumerate(sizes):
        out[n] = _dup_ngram_char_fraction(hashes, lengths, int(n))
        if out[n] <= min(limits[m] for m in sizes[i:]):
            break
    return out


def compute_signals(text: str, lang: str, block: Any) -> dict[str, float]:
    """Every signal the rules of ``block`` need, also stored as columns for later analysis."""
    cjk = block.get("units", "words") == "chars"
    lines = text.split("\n")
    nonblank = [ln for ln in lines if ln.strip()]
    units = CJK_UNIT.findall(text) if cjk else text.split()
    hashes = unit_ids(units)[0] + np.uint64(1)  # ids suffice inside one document; +1 keeps 0 out
    lengths = np.fromiter(map(len, units), dtype=np.int64, count=len(units))
    s: dict[str, float] = {k: float("nan") for k in SIGNALS}
    s["units"] = float(len(units))
    s["dup_line_fraction"], s["dup_line_char_fraction"] = _dup_fractions(lines)
    s["dup_para_fraction"], s["dup_para_char_fraction"] = _dup_fractions(re.split(r"\n\s*\n", text))
    tops = {n: _top_ngram_char_fraction(hashes, lengths, int(n)) for n in block.get("max_top_ngram_char_fraction", {})}
    dups = _dup_ngram_fractions(hashes, lengths, block.get("max_dup_ngram_char_fraction", {}))
    s["_top"], s["_dup"] = tops, dups  # type: ignore[assignment]
    s["top_ngram_char_fraction"] = max(tops.values(), default=0.0)
    s["dup_ngram_char_fraction"] = max(dups.values(), default=0.0)
    s["line_punct_ratio"] = sum(ln.rstrip().endswith(TERMINAL_PUNCT) for ln in nonblank) / max(len(nonblank), 1)
    s["short_line_ratio"] = sum(len(ln.strip()) < 30 for ln in nonblank) / max(len(nonblank), 1)
    lowered = text.lower()
    s["policy_line_fraction"] = 0.0
    if POLICY_PATTERN.search(lowered):  # most documents have no policy phrase at all: one scan decides
        s["policy_line_fraction"] = sum(1 for ln in lowered.split("\n") if ln.strip() and POLICY_PATTERN.search(ln)) / len(nonblank)
    s["lorem_ipsum"] = float("lorem ipsum" in lowered)
    if cjk:
        n_cjk = len(CJK_CHAR.findall(text))
        s["cjk_share"] = n_cjk / max(len(units), 1)
        s["cjk_punct_ratio"] = len(CJK_PUNCT.findall(text)) / max(n_cjk, 1)
    else:
        stripped_chars = sum(map(len, map(methodcaller("strip", WORD_EDGE_PUNCT), units)))
        s["mean_word_length"] = stripped_chars / len(units) if units else 0.0
        s["alpha_words"] = len(ALPHA_WORD.findall(text)) / max(len(units), 1)
        s["symbol_word_ratio"] = (text.count("#") + text.count("...") + text.count("…")) / max(len(units), 1)
        s["bullet_lines"] = sum(ln.lstrip().startswith(BULLETS) for ln in nonblank) / max(len(nonblank), 1)
        s["ellipsis_lines"] = sum(ln.rstrip().endswith(("...", "…")) for ln in nonblank) / max(len(nonblank), 1)
        stop = STOP_WORDS.get(lang)
        s["stop_words"] = float(sum(map(stop.__contains__, lowered.split()))) if stop else float("inf")
        s["newline_per_word"] = text.count("\n") / max(len(units), 1)
    return s


def quality_verdict(text: str, lang: str, cfg: Any) -> tuple[str | None, dict[str, float]]:
    """(first failing rule or None, signals)."""
    block = block_for(lang, cfg)
    s = compute_signals(text, lang, block)
    n = s["units"]

    def over(key: str, value: float) -> bool:
        return key in block and value > block[key]

    def under(key: str, value: float) -> bool:
        return key in block and value < block[key]

    checks: list[tuple[str, bool]] = [
        # length first: a three-word page fails everything else too, and "too short" is the honest reason
        ("too_short", under("min_words", n) or under("min_chars", n)),
        ("too_long", over("max_words", n) or over("max_chars", n)),
        ("gopher_dup_lines", over("max_dup_line_fraction", s["dup_line_fraction"])
         or over("max_dup_line_char_fraction", s["dup_line_char_fraction"])),
        ("gopher_dup_paragraphs", over("max_dup_para_fraction", s["dup_para_fraction"])
         or over("max_dup_para_char_fraction", s["dup_para_char_fraction"])),
        ("gopher_top_ngram", any(v > block["max_top_ngram_char_fraction"][k] for k, v in s["_top"].items())),
        ("gopher_dup_ngram", any(v > block["max_dup_ngram_char_fraction"][k] for k, v in s["_dup"].items())),
        ("c4_lorem_ipsum", bool(block.get("drop_lorem_ipsum", False)) and s["lorem_ipsum"] > 0),
        ("c4_policy_lines", over("max_policy_line_fraction", s["policy_line_fraction"])),
        ("gopher_mean_word_length", under("min_mean_word_length", s["mean_word_length"])
         or over("max_mean_word_length", s["mean_word_length"])),
        ("gopher_symbol_ratio", over("max_symbol_word_ratio", s.get("symbol_word_ratio", 0.0))),
        ("gopher_bullet_lines", over("max_bullet_lines", s.get("bullet_lines", 0.0))),
        ("gopher_ellipsis_lines", over("max_ellipsis_lines", s.get("ellipsis_lines", 0.0))),
        ("gopher_alpha_words", under("min_alpha_words", s["alpha_words"])),
        ("gopher_stop_words", under("min_stop_words", s.get("stop_words", float("inf")))),
        ("fineweb_line_punct", under("min_line_punct_ratio", s["line_punct_ratio"])),
        ("fineweb_short_lines", over("max_short_line_ratio", s["short_line_ratio"])),
        ("fineweb_char_dup", over("max_char_dup_ratio", s["dup_line_char_fraction"])),
        ("fineweb_list_ratio", over("max_newline_per_word", s.get("newline_per_word", 0.0))),
        ("cjk_share", under("min_cjk_share", s["cjk_share"])),
        ("cjk_punctuation", under("min_cjk_punct_ratio", s["cjk_punct_ratio"])),
    ]
    reason = next((name for name, failed in checks if failed), None)
    return reason, {k: float(s[k]) for k in SIGNALS}
