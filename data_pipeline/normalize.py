"""Unicode and whitespace normalisation, mojibake repair, rejection of binary text.

Everything downstream (language id, quality rules, hashing for dedup) compares
characters, so the same text must look the same: one Unicode form, one kind of
newline and space, no invisible characters. NFKC folds compatibility forms
(full-width Latin letters, ligatures, circled digits) into plain ones, which is
what we want for prose; for code-ish text it is not, because it rewrites
meaning-bearing characters (``x²`` becomes ``x2``, ``ﬁ`` in a string literal
becomes ``fi``), so code-ish documents only get NFC.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

# UTF-8 bytes decoded as Latin-1/CP1252 show up as these lead characters
# followed by a continuation-range character ("Ã©" for "é", "â€™" for "’").
MOJIBAKE = re.compile("[ÃÂâäåæçèéð][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc\u2013-\u2122]")
ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad]")
UNICODE_SPACES = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
CONTROL = re.compile("[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]")
CODE_LINE = re.compile(r"^\s*([$#>]\s|[{}\[\]();]|\w+\s*=\s*|(def|class|import|return|if|for|while|sudo|cd|ls)\b)|[;{}]\s*$")
SPACE_RUN = re.compile(r"[ \t]{2,}|\t")  # runs to collapse; a lone space is left alone (nothing to do)
BLANK_RUN = re.compile(r"\n{3,}")


def repair_mojibake(text: str) -> str:
    """Undo UTF-8-read-as-Latin-1/CP1252 when the round trip decodes cleanly and removes the markers."""
    if not MOJIBAKE.search(text):
        return text
    for codec in ("cp1252", "latin-1"):
        try:
            fixed = text.encode(codec).decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            continue
        if len(MOJIBAKE.findall(fixed)) < len(MOJIBAKE.findall(text)):
            return fixed
    return text


def bad_char_fraction(text: str) -> float:
    """Share of control characters and U+FFFD: high in binary blobs decoded as text."""
    if not text:
        return 0.0
    return (len(CONTROL.findall(text)) + text.count("\ufffd")) / len(text)


def is_code_ish(text: str, threshold: float) -> bool:
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if not lines:
        return False
    return sum(1 for ln in lines if CODE_LINE.search(ln)) / len(lines) > threshold


def normalize_whitespace(text: str, code_ish: bool) -> str:
    """One newline kind, no trailing spaces, at most one blank line; runs of spaces only in prose."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = UNICODE_SPACES.sub(" ", ZERO_WIDTH.sub("", text))
    if code_ish:  # indentation carries meaning in code: keep leading spaces
        lines = [ln.rstrip() for ln in text.split("\n")]
    else:  # one pass over the whole text: a run of spaces and tabs never crosses a newline
        lines = [ln.strip() for ln in SPACE_RUN.sub(" ", text).split("\n")]
    return BLANK_RUN.sub("\n\n", "\n".join(lines)).strip()


def normalize_document(text: str, cfg: Any) -> tuple[str, str | None]:
    """Return (normalised text, None) or (text, reject reason)."""
    if cfg.repair_mojibake:
        text = repair_mojibake(text)
    if bad_char_fraction(text) > cfg.max_bad_char_fraction:
        return text, "broken_encoding"
    if CONTROL.search(text):
        text = CONTROL.sub("", text)
    text = text.replace("\ufffd", "")
    code_ish = is_code_ish(text, cfg.code_line_fraction)
    text = unicodedata.normalize("NFKC" if cfg.nfkc and not code_ish else "NFC", text)
    text = normalize_whitespace(text, code_ish)
    if not text:
        return text, "empty_after_normalization"
    return text, None


def dedup_key_text(text: str) -> str:
    """The form exact dedup hashes: whitespace differences never make two documents distinct."""
    return " ".join(text.split())
