"""py3langid's classifier with its byte-by-byte Python DFA walk replaced by six numpy passes.

Why: on Chinese, language id was the largest stage of stage 1 (0.47 of 1.8
CPU-s/MB, bench/data_pipeline/stage_profile.py). Its cost is the walk: one
Python step per UTF-8 byte, each reading a Python list of boxed ints and a
39 MB transition table that the fastText, KenLM and OpenCC stages between two
documents have evicted from cache.

Why six passes give the same states: the model's tokenizer is an
Aho-Corasick automaton over byte n-grams (langid.py's ``Scanner``), so the
state after any input is the longest suffix of it that is a trie node, and
the deepest node is 6 bytes from the root (a breadth-first search over the
model's transitions finds depths 1..6 and nothing beyond;
``tests/data_pipeline/test_language_id.py`` re-checks it). The state at byte
``i`` is therefore the walk from the root over bytes ``i-5..i``: six
vectorised gathers over the whole text instead of one Python step per byte.
Feature counts are taken in the order of first visit, as py3langid's
``Counter`` does, so the float32 sums, and therefore labels and scores, are
bit-identical to py3langid's own ``classify`` (checked on every embedded
document). Scoring casts only the visited rows of the float16 feature table
to float32 (what numpy's mixed-type matmul does anyway, but through BLAS),
instead of keeping a 57 MB float32 copy per worker.

Everything else (text encoding, NFC, softmax temperature, alias folding) is
py3langid's own code: this class overrides ``_raw_score`` only, which is
why pyproject pins py3langid to the 0.4 series whose internals it reads.
"""

from __future__ import annotations

import numpy as np
from py3langid.langid import RAW_FLOOR, LanguageIdentifier

AUTOMATON_DEPTH = 6
"""Longest path from the root of py3langid 0.4's tokenizer automaton (bytes); see the module docstring."""


class VectorisedIdentifier(LanguageIdentifier):
    """``LanguageIdentifier`` whose feature extraction runs as ``AUTOMATON_DEPTH`` numpy passes."""

    __slots__ = ["_arrays"]

    def tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(next state table, row offset per state, feature per state; -1: none) as int32 arrays, built once."""
        try:
            return self._arrays
        except AttributeError:
            nextmove = np.frombuffer(self.tk_nextmove, dtype=np.dtype(self.tk_nextmove.typecode))
            self._arrays = (nextmove.astype(np.int32), np.asarray(self._rowbase, dtype=np.int32),
                            np.asarray(self.tk_output, dtype=np.int32))
            return self._arrays

    def states(self, data: bytes) -> np.ndarray:
        """The automaton's state after each byte of ``data``, as py3langid's walk from the root reaches them."""
        nextmove, rowbase, _ = self.tables()
        byte = np.frombuffer(data, dtype=np.uint8).astype(np.int32)
        n = len(byte)
        state = np.zeros(n, dtype=np.int32)
        for back in range(AUTOMATON_DEPTH - 1, 0, -1):  # consume byte i-back for every position that has one
            if back < n:
                state[back:] = nextmove[rowbase[state[back:]] + byte[:n - back]]
        return nextmove[rowbase[state] + byte]

    def _raw_score(self, text: bytes) -> np.ndarray:
        features = self.tables()[2][self.states(text)]
        features = features[features >= 0]
        if not len(features):
            fill = 0.0 if self._norm_probs else RAW_FLOOR
            return np.full(len(self.nb_classes), fill, dtype=np.float32)
        index, first, counts = np.unique(features, return_index=True, return_counts=True)
        order = np.argsort(first, kind="stable")  # py3langid sums in order of first visit
        index, counts = index[order].astype(np.intp), counts[order].astype(np.float32)
        return np.log1p(counts) @ self.nb_ptc[index].astype(np.float32) + self.nb_pc
