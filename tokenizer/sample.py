"""Draw the tokenizer-training sample from the training shards with the mixture's weights.

The tokenizer should compress the text the model will actually see, so each source is
drawn in proportion to its mixture weight, not its raw size.  Languages come along in
the proportion they have inside each source, which is exactly their share of the mix.
Each document's fate depends only on (seed, id), so the sample is the same whatever
order shards are read in, and one streaming pass suffices: the corpus is never in memory.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from tokenizer.data_source import DataDirError, iter_batches, list_shards, read_mixture


def inclusion_rates(mixture: dict[str, dict], target_bytes: int) -> dict[str, float]:
    """Expected copies of each document per source (may exceed 1 for up-weighted sources)."""
    total_weight = sum(float(e["weight"]) for e in mixture.values())
    rates = {}
    for source, entry in mixture.items():
        share = target_bytes * float(entry["weight"]) / total_weight
        rates[source] = share / float(entry["bytes"]) if entry["bytes"] > 0 else 0.0
    return rates


def copies_of(doc_id: str, seed: int, rate: float) -> int:
    """floor(rate) copies plus one more with probability frac(rate), decided by a hash of the id."""
    digest = hashlib.blake2b(f"{seed}\x00{doc_id}".encode(), digest_size=8).digest()
    uniform = int.from_bytes(digest, "big") / 2**64
    whole = math.floor(rate)
    return whole + (1 if uniform < rate - whole else 0)


def split_into_chunks(text: str, chunk_chars: int) -> Iterator[str]:
    """Cut a document into trainer-sized pieces, preferring line breaks so code lines stay whole."""
    start = 0
    while start < len(text):
        end = min(start + chunk_chars, len(text))
        if end < len(text):
            newline = text.rfind("\n", start + chunk_chars // 2, end)
            if newline != -1:
                end = newline + 1
        yield text[start:end]
        start = end


def draw_training_sample(cfg, sample_path: Path) -> dict:
    """Write the sample as JSON lines (one chunk per line, newlines kept) and return its statistics."""
    sample_cfg = cfg.tokenizer.sample
    mixture = read_mixture(cfg.input)
    shards = list_shards(cfg.input, "shards")
    rates = inclusion_rates(mixture, int(sample_cfg.bytes))
    seed, chunk_chars = int(sample_cfg.seed), int(sample_cfg.chunk_chars)

    drawn_bytes: dict[str, int] = defaultdict(int)
    drawn_docs: dict[str, int] = defaultdict(int)
    lang_bytes: dict[str, int] = defaultdict(int)
    chunks = 0
    sample_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = sample_path.with_name(sample_path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as out:
        for shard in tqdm(shards, desc="sample", unit="shard"):
            for batch in iter_batches(shard, ("id", "text", "lang", "source"), int(sample_cfg.batch_size)):
                for doc_id, text, lang, source in zip(batch["id"], batch["text"], batch["lang"], batch["source"]):
                    if source not in rates:
                        raise DataDirError(f"input: {shard} has source {source!r} missing from mixture.json")
                    copies = copies_of(str(doc_id), seed, rates[source])
                    if copies == 0 or not text:
                        continue
                    size = len(text.encode("utf-8"))
                    drawn_bytes[source] += copies * size
                    drawn_docs[source] += copies
                    lang_bytes[lang] += copies * size
                    for _ in range(copies):
                        for chunk in split_into_chunks(text, chunk_chars):
                            out.write(json.dumps(chunk, ensure_ascii=False) + "\n")
                            chunks += 1
    os.replace(temporary, sample_path)
    if chunks == 0:
        raise DataDirError(f"input: the sample drawn from {cfg.input}/shards is empty (check mixture.json weights)")
    total = sum(drawn_bytes.values())
    return {
        "target_bytes": int(sample_cfg.bytes),
        "bytes": total,
        "chunks": chunks,
        "inclusion_rate": rates,
        "by_source": {s: {"bytes": drawn_bytes[s], "documents": drawn_docs[s], "share": drawn_bytes[s] / total}
                      for s in sorted(drawn_bytes)},
        "by_lang": {lang: {"bytes": b, "share": b / total} for lang, b in sorted(lang_bytes.items())},
    }


def iter_sample(sample_path: Path) -> Iterator[str]:
    """Stream the sample back to the trainer."""
    with open(sample_path, encoding="utf-8") as lines:
        for line in lines:
            yield json.loads(line)
