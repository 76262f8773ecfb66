"""Small indexed datasets in the tokenizer stage's layout (manifest.json + .bin/.idx).

Documents follow simple learnable rules (an affine next-token map per source,
with noise), so a few dozen steps visibly lower the loss.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

VOCAB = 512
EOD, PAD, BOS = 2, 0, 1


def _documents(rule: int, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    docs = []
    for _ in range(count):
        length = int(rng.integers(40, 160))
        ids = np.empty(length, dtype=np.int64)
        ids[0] = rng.integers(3, VOCAB)
        for i in range(1, length):
            nxt = (ids[i - 1] * rule + 7) % (VOCAB - 3) + 3
            ids[i] = nxt if rng.random() > 0.1 else rng.integers(3, VOCAB)
        docs.append(np.append(ids, EOD))
    return docs


def _write(prefix: Path, docs: list[np.ndarray]) -> dict:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.uint16)
    for doc in docs:
        builder.add_document(torch.from_numpy(doc.astype(np.int64)), [len(doc)])
    builder.finalize(str(prefix) + ".idx")
    return {"prefix": str(prefix), "tokens": int(sum(len(d) for d in docs)), "documents": len(docs),
            "bytes": int(sum(len(d) for d in docs)) * 4}


def make_indexed_dataset(root: Path, seed: int = 0) -> Path:
    """Write ``root/indexed`` with two training sources and held-out splits; return it."""
    rng = np.random.default_rng(seed)
    indexed = Path(root) / "indexed"
    train, by_source = {}, {}
    for source, rule, weight in (("web", 5, 0.7), ("code", 11, 0.3)):
        train[source] = {**_write(indexed / "train" / source, _documents(rule, 300, rng)), "weight": weight}
        by_source[source] = _write(indexed / "heldout" / "by_source" / source, _documents(rule, 40, rng))
    manifest = {"vocab_size": VOCAB, "eod_id": EOD, "pad_id": PAD, "bos_id": BOS,
                "tokenizer_model": str(indexed / "missing-tokenizer.model"), "dtype": "uint16",
                "train": train, "heldout": {"by_source": by_source, "by_lang": {"en": by_source["web"]}}}
    (indexed / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return indexed


if __name__ == "__main__":
    import sys

    print(make_indexed_dataset(Path(sys.argv[1])))
