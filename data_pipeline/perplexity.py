"""Document perplexity under a KenLM n-gram model, and CCNet's head/middle/tail buckets.

CCNet (Wenzek et al. 2020) trains a 5-gram KenLM model on Wikipedia per
language, scores every line of a web document, and reports the document's
perplexity ``10 ** (-sum log10 p / number of tokens)`` (``</s>`` counted once
per line). Documents are then split per language at the 33rd and 66th
percentile into head (most Wikipedia-like), middle and tail. Here the text is
normalised and tokenised by ``model_text`` (characters for Chinese,
lowercased words for the rest) instead of CCNet's SentencePiece pieces: a
model built by ``data_pipeline.tools.build_lm`` sees the same tokens; a
real CCNet model expects SentencePiece pieces (see docs/data_pipeline.md).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline.model_text import lm_lines

BUCKETS = ("head", "middle", "tail")


@lru_cache(maxsize=8)
def load_lm(path: str) -> Any:
    """kenlm.Model, loaded once per worker process (stages are rebuilt per batch; an ARPA load parses text)."""
    import kenlm

    return kenlm.Model(str(_plain_arpa(path)) if path.endswith(".gz") else path)


def _plain_arpa(path: str) -> Path:
    """A decompressed copy of a gzipped ARPA file in the temp directory (made once, shared by workers).

    The shipped models are gzipped to stay small in the repository, and KenLM reads gzip only when it was
    compiled against zlib, which a source build on a bare machine may not be.
    """
    stat = os.stat(path)
    key = hashlib.sha1(f"{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    out = Path(tempfile.gettempdir()) / "data_pipeline_lm" / f"{key}.arpa"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}")
        with gzip.open(path, "rb") as src, open(tmp, "wb") as dst:
            dst.write(src.read())
        os.replace(tmp, out)  # atomic: workers racing on the same file each write their own tmp
    return out


def perplexity(model: Any, text: str, max_chars: int | None = None) -> float | None:
    """CCNet document perplexity of ``text``; None for a document without a single token."""
    log10_prob, length = 0.0, 0
    for toks in lm_lines(text, max_chars):
        log10_prob += model.score(" ".join(toks), bos=True, eos=True)
        length += len(toks) + 1
    if length == 0:
        return None
    return float(10.0 ** (-log10_prob / length))


def bucket(value: float, cutoffs: list[float]) -> str:
    """head below the first cut-off, tail at or above the second, middle between (CCNet's three buckets)."""
    low, high = cutoffs
    return "head" if value < low else ("middle" if value < high else "tail")


def percentile_cutoffs(values: list[float], percentiles: tuple[float, float] = (33.3, 66.7)) -> list[float]:
    """The two bucket cut-offs from a reference sample's perplexities (CCNet: the 33rd and 66th percentile)."""
    if len(values) < 3:
        raise ValueError(f"need at least 3 reference perplexities for cut-offs, got {len(values)}")
    return [round(float(v), 1) for v in np.percentile(np.asarray(values, dtype=np.float64), percentiles)]
