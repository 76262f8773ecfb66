"""A small n-gram estimator that writes ARPA files, so the pipeline can ship KenLM models without ``lmplz``.

KenLM's Python module only queries models; its estimator ``lmplz`` is a C++
binary that the PyPI package does not build. For the tiny models built from
the embedded corpus this module does the estimation in Python: interpolated
Kneser-Ney with one discount per order, ``D = n1 / (n1 + 2 n2)`` (Chen &
Goodman 1998; ``lmplz`` uses *modified* KN, three discounts per order, which
matters little at this size). Lower orders use continuation counts (the number
of distinct words seen before an n-gram), except n-grams starting with ``<s>``,
which keep raw counts as in SRILM and KenLM. Unigrams are interpolated with the
uniform distribution over the vocabulary plus ``<unk>``.

The ARPA file stores for each kept n-gram ``hw`` its full interpolated
probability and, for each context ``h``, the back-off weight ``gamma(h)``; a
query for an unseen ``hw`` then returns ``gamma(h) * p(w | h')``, which for an
interpolated model is exactly the estimate. Pruning (``min_count``) drops
n-grams of order >= 2 seen fewer times; the distributions stay normalised
because totals and back-off weights are computed over what is kept.
"""

from __future__ import annotations

import gzip
import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
Gram = tuple[str, ...]


def count_ngrams(sentences: Iterable[list[str]], order: int, vocab: set[str] | None = None) -> list[Counter]:
    """Raw counts of 1..order-grams over sentences padded with one ``<s>`` and ``</s>``; words outside
    ``vocab`` (when given) become ``<unk>``."""
    counts: list[Counter] = [Counter() for _ in range(order)]
    for toks in sentences:
        seq = [BOS, *(t if vocab is None or t in vocab else UNK for t in toks), EOS]
        for n in range(1, order + 1):
            c = counts[n - 1]
            for i in range(len(seq) - n + 1):
                c[tuple(seq[i:i + n])] += 1
    return counts


def _discount(adjusted: dict[Gram, int]) -> float:
    n1 = sum(1 for a in adjusted.values() if a == 1)
    n2 = sum(1 for a in adjusted.values() if a == 2)
    return n1 / (n1 + 2 * n2) if n1 and n2 else 0.5


def estimate(counts: list[Counter], min_count: int = 1) -> tuple[list[dict[Gram, float]], dict[Gram, float]]:
    """(log10 probability of every kept n-gram by order, log10 back-off weight of every context).

    ``counts`` as from ``count_ngrams``. Probabilities are computed order by order from the bottom, each
    order interpolating its discounted estimate with the (already final) order below.
    """
    order = len(counts)
    adjusted: list[dict[Gram, int]] = [{} for _ in range(order)]
    adjusted[-1] = dict(counts[-1])
    for n in range(order - 1, 0, -1):  # continuation counts of (n)-grams from the (n+1)-grams
        cont: Counter = Counter(g[1:] for g in counts[n])
        adjusted[n - 1] = {g: (c if g[0] == BOS else cont[g]) for g, c in counts[n - 1].items() if g != (BOS,)}
    # pruning: orders >= 2, on raw counts, so a kept n-gram's prefix and suffix (seen as often) are kept too
    for n in range(1, order):
        adjusted[n] = {g: a for g, a in adjusted[n].items() if counts[n][g] >= min_count}
    adjusted[0].setdefault((UNK,), 0)

    probs: list[dict[Gram, float]] = [{} for _ in range(order)]
    backoff: dict[Gram, float] = {}
    for n in range(order):
        d = _discount(adjusted[n])
        total: Counter = Counter()
        types: Counter = Counter()
        for g, a in adjusted[n].items():
            total[g[:-1]] += a
            types[g[:-1]] += a > 0
        gamma = {h: d * types[h] / total[h] for h in total}
        if n == 0:
            uniform = 1.0 / len(adjusted[0])
            lin = {g: max(a - d, 0.0) / total[()] + gamma[()] * uniform for g, a in adjusted[0].items()}
        else:
            lin = {g: max(a - d, 0.0) / total[g[:-1]] + gamma[g[:-1]] * 10 ** lookup(probs, backoff, g[1:])
                   for g, a in adjusted[n].items()}
            backoff.update({h: math.log10(v) for h, v in gamma.items()})
        probs[n] = {g: math.log10(p) for g, p in lin.items()}
    probs[0][(BOS,)] = -99.0  # never predicted; present so that it can be a context
    return probs, backoff


def lookup(probs: list[dict[Gram, float]], backoff: dict[Gram, float], gram: Gram) -> float:
    """log10 p(w | h) for ``gram = h + (w,)`` the way an ARPA reader computes it (back off until found)."""
    if gram in probs[len(gram) - 1]:
        return probs[len(gram) - 1][gram]
    if len(gram) == 1:
        return probs[0][(UNK,)]
    return backoff.get(gram[:-1], 0.0) + lookup(probs, backoff, gram[1:])


def write_arpa(path: str | Path, probs: list[dict[Gram, float]], backoff: dict[Gram, float]) -> None:
    """ARPA text (gzipped when ``path`` ends in .gz), n-grams sorted so the same counts give the same bytes."""
    lines = ["", "\\data\\", *(f"ngram {n + 1}={len(p)}" for n, p in enumerate(probs))]
    highest = len(probs) - 1
    for n, table in enumerate(probs):
        lines += ["", f"\\{n + 1}-grams:"]
        for g in sorted(table):
            entry = f"{table[g]:.6f}\t{' '.join(g)}"
            if n < highest and g in backoff:
                entry += f"\t{backoff[g]:.6f}"
            lines.append(entry)
    lines += ["", "\\end\\", ""]
    data = "\n".join(lines).encode("utf-8")
    if str(path).endswith(".gz"):
        data = gzip.compress(data, compresslevel=9, mtime=0)  # mtime 0: the same model gives the same bytes
    Path(path).write_bytes(data)


def build_arpa(sentences: list[list[str]], path: str | Path, order: int = 3, min_count: int = 1,
               min_word_count: int = 1) -> dict[str, int]:
    """Estimate and write a model; words seen fewer than ``min_word_count`` times train ``<unk>``.

    Returns the number of n-grams per order (for the build log).
    """
    vocab = None
    if min_word_count > 1:
        freq = Counter(t for toks in sentences for t in toks)
        vocab = {t for t, c in freq.items() if c >= min_word_count}
    probs, backoff = estimate(count_ngrams(sentences, order, vocab), min_count)
    write_arpa(path, probs, backoff)
    return {f"{n + 1}-grams": len(p) for n, p in enumerate(probs)}
