"""Benchmark decontamination: an index of hashed n-grams of evaluation sets, and where a document hits it.

What is compared (both sides go through ``units``, so they can never disagree):

- Normalisation: NFKC, lower case, Traditional -> Simplified (OpenCC ``t2s``),
  punctuation and whitespace dropped, and single-character Latin/digit tokens
  dropped (option labels ``A.``/``B.``, question numbers ``1.``): a copy of a
  question reformatted as a numbered exam sheet still matches.
- English and code: 13-grams of words (runs of letters/digits; ``_`` splits
  identifiers), as GPT-3 and datatrove.
- Chinese: ``char_ngram`` (20) consecutive characters. 13 words of Chinese are
  about 20 characters (modern Chinese averages ~1.5 characters a word), and 13
  characters is too short: exam stems such as ``下列关于细胞的叙述正确的是`` are
  exactly 13 characters and recur in clean exam-prep pages with other options.
  Only windows that are at least a quarter CJK are indexed, so a CJK item's
  Latin code or formula never matches English text character by character.
- One benchmark record is one text: its configured fields joined in order
  (question, then choices, ...), so n-grams run from the question into its
  options. A record shorter than n but at least ``word_min``/``char_min`` units
  is indexed whole (GPT-3 lowered n to 8 for short items); shorter ones cannot
  be told from common phrases and are counted as ``skipped_short``.

The index is a sorted uint64 array of n-gram hashes per (kind, length) with a
parallel uint64 bit mask of the benchmarks holding that n-gram: 16 bytes per
distinct n-gram, against ~80 for a Python set of ints, and a document is looked
up with one vectorised ``searchsorted`` instead of a Python loop.
"""

from __future__ import annotations

import gzip
import json
import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline.errors import ConfigError
from data_pipeline.text_units import mix64, ngram_hashes, unit_hashes

CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
RUN = re.compile(f"[{CJK}]+|[^\\W_{CJK}]+")
HAS_CJK = re.compile(f"[{CJK}]")
CJK_SHARE = 0.25  # a record is Chinese (character n-grams) above this share of CJK characters; so is a window
DEFAULT_FIELDS = ("question", "Question", "choices", "A", "B", "C", "D", "answer", "prompt", "canonical_solution")
WORD, CHAR = "word", "char"
MAX_BENCHMARKS = 64  # bits of the mask


@dataclass
class Units:
    """The matching units of one text and the character span of each in the original text."""

    word_hashes: np.ndarray
    word_starts: np.ndarray
    word_ends: np.ndarray
    char_hashes: np.ndarray
    char_pos: np.ndarray
    char_cjk: np.ndarray


@lru_cache(maxsize=65536)
def _t2s_char(ch: str) -> str:
    from data_pipeline.chinese_script import to_simplified

    out = to_simplified(ch)
    return out if len(out) == 1 else ch


def _view(text: str) -> str | None:
    """NFKC + lower + t2s of ``text`` when that keeps every character at its position, else None."""
    v = unicodedata.normalize("NFKC", text)
    if len(v) != len(text):
        return None
    v = v.lower()
    if len(v) != len(text):
        return None
    if HAS_CJK.search(v):
        from data_pipeline.chinese_script import to_simplified

        s = to_simplified(v)
        v = s if len(s) == len(v) else "".join(map(_t2s_char, v))
    return v


def _runs(text: str) -> Iterator[tuple[int, int, str]]:
    """(start, end, normalised run) of every CJK run and every other letter/digit run of length > 1."""
    view = _view(text)
    if view is not None:
        for m in RUN.finditer(view):
            if len(m.group()) > 1 or HAS_CJK.match(m.group()):
                yield m.start(), m.end(), m.group()
        return
    for m in RUN.finditer(text):  # rare: normalising changed lengths; spans are the source run's
        normal = _view_loose(m.group())
        for sub in RUN.finditer(normal):
            if len(sub.group()) > 1 or HAS_CJK.match(sub.group()):
                yield m.start(), m.end(), sub.group()


def _view_loose(text: str) -> str:
    from data_pipeline.chinese_script import to_simplified

    return to_simplified(unicodedata.normalize("NFKC", text).lower())


def units(text: str) -> Units:
    """Word units (non-CJK runs) and character units (every character of every run) with their spans."""
    runs = list(_runs(text))
    words = [r for r in runs if not HAS_CJK.match(r[2])]
    word_hashes = unit_hashes([w[2] for w in words])
    word_starts = np.fromiter((w[0] for w in words), dtype=np.int64, count=len(words))
    word_ends = np.fromiter((w[1] for w in words), dtype=np.int64, count=len(words))
    joined = "".join(r[2] for r in runs)
    codes = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)
    lengths = np.fromiter((len(r[2]) for r in runs), dtype=np.int64, count=len(runs))
    starts = np.fromiter((r[0] for r in runs), dtype=np.int64, count=len(runs))
    spans = np.fromiter((r[1] - r[0] for r in runs), dtype=np.int64, count=len(runs))
    before = np.repeat(np.cumsum(lengths) - lengths, lengths)
    offset = np.arange(len(codes), dtype=np.int64) - before
    char_pos = np.repeat(starts, lengths) + np.minimum(offset, np.repeat(spans - 1, lengths))
    cjk = ((codes >= 0x3400) & (codes <= 0x9FFF)) | ((codes >= 0xF900) & (codes <= 0xFAFF)) | (codes >= 0x20000)
    return Units(word_hashes, word_starts, word_ends, mix64(codes), char_pos, cjk)


def _windows_cjk_enough(cjk: np.ndarray, n: int) -> np.ndarray:
    """Per n-character window: does it hold at least CJK_SHARE CJK characters?"""
    csum = np.concatenate([[0], np.cumsum(cjk, dtype=np.int64)])
    return (csum[n:] - csum[:-n]) >= max(1, int(np.ceil(CJK_SHARE * n)))


@dataclass
class Match:
    """Where a document hits the index: n-grams per benchmark and the character spans they cover."""

    counts: dict[str, int] = field(default_factory=dict)
    spans: list[tuple[int, int]] = field(default_factory=list)

    @property
    def benchmark(self) -> str:
        """The benchmark most n-grams came from (ties: by name), which the drop reason names."""
        return min(self.counts, key=lambda b: (-self.counts[b], b))


@dataclass
class NgramIndex:
    """Hashed n-grams of the configured benchmarks, looked up one document at a time."""

    names: list[str]
    word_ngram: int
    char_ngram: int
    tables: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]
    stats: dict[str, dict[str, int]]

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + m.nbytes for k, m in self.tables.values())

    def find(self, text: str) -> Match | None:
        """The benchmarks ``text`` shares an n-gram with, or None; empty index: always None."""
        if not self.tables:
            return None
        u = units(text)
        match = Match()
        for (kind, n), (keys, masks) in self.tables.items():
            hashes = u.word_hashes if kind == WORD else u.char_hashes
            if len(hashes) < n or (kind == CHAR and not u.char_cjk.any()):
                continue
            grams = ngram_hashes(hashes, n)
            where = np.arange(len(grams))
            if kind == CHAR:  # only such windows are indexed: English text costs no look-up here
                where = np.flatnonzero(_windows_cjk_enough(u.char_cjk, n))
                grams = grams[where]
            at = np.minimum(np.searchsorted(keys, grams), len(keys) - 1)
            hit = np.flatnonzero(keys[at] == grams)
            if not len(hit):
                continue
            for i, bit in zip(where[hit].tolist(), masks[at[hit]].tolist()):
                for b, name in enumerate(self.names):
                    if bit >> b & 1:
                        match.counts[name] = match.counts.get(name, 0) + 1
                if kind == WORD:
                    match.spans.append((int(u.word_starts[i]), int(u.word_ends[i + n - 1])))
                else:
                    match.spans.append((int(u.char_pos[i]), int(u.char_pos[i + n - 1]) + 1))
        return match if match.counts else None


def record_text(rec: Mapping[str, Any], fields: Sequence[str]) -> str:
    """The configured fields of one benchmark record joined in order; lists (choices) element by element."""
    parts: list[str] = []
    for name in fields:
        value = rec.get(name)
        if isinstance(value, Mapping):  # e.g. ARC's choices: {"text": [...], "label": [...]}
            value = value.get("text", list(value.values()))
        if isinstance(value, (list, tuple)):
            parts.extend(str(v) for v in value if v is not None)
        elif value is not None:
            parts.append(str(value))
    return "\n".join(parts)


def read_records(path: Path, key: str) -> Iterator[dict]:
    """Records of a jsonl (optionally .gz) file or of every such file in a directory, sorted."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith((".jsonl", ".jsonl.gz"))) \
        if path.is_dir() else [path]
    if not files:
        raise ConfigError(f"config key '{key}': no .jsonl files in '{path}'")
    for f in files:
        opener = gzip.open if f.name.endswith(".gz") else open
        with opener(f, "rt", encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"config key '{key}': {f}:{line_no} is not JSON: {exc}") from exc
                if not isinstance(rec, dict):
                    raise ConfigError(f"config key '{key}': {f}:{line_no} is not a JSON object")
                yield rec


def record_grams(text: str, word_n: int, word_min: int, char_n: int, char_min: int) -> tuple[str, int, np.ndarray]:
    """(kind, n, n-gram hashes) of one record; n below the configured one when the record is shorter."""
    u = units(text)
    if len(u.char_hashes) and u.char_cjk.mean() >= CJK_SHARE:
        n = min(char_n, len(u.char_hashes))
        if n < char_min:
            return CHAR, n, np.empty(0, dtype=np.uint64)
        return CHAR, n, ngram_hashes(u.char_hashes, n)[_windows_cjk_enough(u.char_cjk, n)]
    n = min(word_n, len(u.word_hashes))
    if n < word_min:
        return WORD, n, np.empty(0, dtype=np.uint64)
    return WORD, n, ngram_hashes(u.word_hashes, n)


def build_index(benchmarks: Mapping[str, Any], default_fields: Sequence[str], word_ngram: int = 13,
                word_min: int = 8, char_ngram: int = 20, char_min: int = 12,
                key: str = "decontaminate.benchmarks") -> NgramIndex:
    """Read every benchmark file and index its records; ConfigError naming the key for what cannot be used.

    ``benchmarks``: {name: path} or {name: {path, fields}}. A benchmark that yields no n-gram at all is
    an error (most likely the wrong ``fields``), not a silent no-op.
    """
    if len(benchmarks) > MAX_BENCHMARKS:
        raise ConfigError(f"config key '{key}': at most {MAX_BENCHMARKS} benchmarks")
    parts: dict[tuple[str, int], list[tuple[np.ndarray, int]]] = {}
    stats: dict[str, dict[str, int]] = {}
    names = list(benchmarks)
    for b, name in enumerate(names):
        spec = benchmarks[name]
        path, fields = (spec.get("path"), spec.get("fields") or default_fields) if isinstance(spec, Mapping) \
            else (spec, default_fields)
        if not path or not Path(str(path)).expanduser().exists():
            raise ConfigError(f"config key '{key}.{name}': '{path}' does not exist")
        st = stats[name] = {"records": 0, "indexed": 0, "skipped_short": 0, "ngrams": 0}
        for rec in read_records(Path(str(path)).expanduser(), f"{key}.{name}"):
            st["records"] += 1
            kind, n, grams = record_grams(record_text(rec, list(fields)), word_ngram, word_min, char_ngram, char_min)
            if not len(grams):
                st["skipped_short"] += 1
                continue
            st["indexed"] += 1
            st["ngrams"] += len(grams)
            parts.setdefault((kind, n), []).append((grams, b))
        if not st["indexed"]:
            raise ConfigError(f"config key '{key}.{name}': none of its {st['records']} records has text of "
                              f"{word_min}+ words or {char_min}+ characters in fields {list(fields)}")
    tables = {}
    for kn, arrays in sorted(parts.items()):
        keys = np.concatenate([g for g, _ in arrays])
        bits = np.concatenate([np.full(len(g), 1 << b, dtype=np.uint64) for g, b in arrays])
        order = np.argsort(keys, kind="stable")
        keys, bits = keys[order], bits[order]
        first = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
        tables[kn] = (keys[first], np.bitwise_or.reduceat(bits, first))
    return NgramIndex(names, word_ngram, char_ngram, tables, stats)


def cut_spans(text: str, spans: list[tuple[int, int]], margin: int) -> tuple[str, int, int]:
    """(text without the spans widened by ``margin``, spans removed after merging, pieces left).

    Pieces are the non-blank stretches between removed spans, joined by a blank line (they were not
    adjacent in the source). GPT-3 also split documents at the cuts; here they stay one document.
    """
    merged: list[list[int]] = []
    for s, e in sorted((max(0, s - margin), min(len(text), e + margin)) for s, e in spans):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    pieces, prev = [], 0
    for s, e in merged:
        pieces.append(text[prev:s])
        prev = e
    pieces.append(text[prev:])
    kept = [p.strip() for p in pieces if p.strip()]
    return "\n\n".join(kept), len(merged), len(kept)
