"""Token batches for single-process experiments: the tokenizer stage's indexed data, or
fixed random tokens when no data is given.

Why not megatron's GPTDataset here: the coordinate check and the benchmark
need a few hundred fixed sequences in a reproducible order, and one flat token
stream cut into windows gives exactly that with no cache directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import torch


def load_token_stream(data_path: str | Path, split: str = "train", max_tokens: int | None = None) -> np.ndarray:
    """All documents of a split (``train`` or ``heldout``) concatenated, sources in name order."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    manifest_path = Path(data_path) / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"data.path: no manifest.json in '{data_path}' "
                                "(point it at the tokenizer output's 'indexed' directory)")
    manifest = json.loads(manifest_path.read_text())
    entries = manifest["train"] if split == "train" else manifest["heldout"]["by_source"]
    pieces, total = [], 0
    for _, entry in sorted(entries.items()):
        dataset = IndexedDataset(entry["prefix"])
        for i in range(len(dataset)):
            doc = np.asarray(dataset[i], dtype=np.int64)
            pieces.append(doc)
            total += doc.size
            if max_tokens and total >= max_tokens:
                return np.concatenate(pieces)[:max_tokens]
    return np.concatenate(pieces)


def vocab_size_of(data_path: str | Path) -> int:
    return int(json.loads((Path(data_path) / "manifest.json").read_text())["vocab_size"])


def random_stream(vocab_size: int, num_tokens: int, seed: int) -> np.ndarray:
    """Fixed random tokens (coordinate check without data), Zipf-distributed like text.

    Why not uniform: with uniform tokens every input vector is nearly orthogonal
    to every other, so an Adam update barely correlates with the next batch and
    a finite-width "noise" term (∝ 1/sqrt(width)) hides the μP limit; a Zipf
    unigram law gives the shared structure real text has.
    """
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, vocab_size + 1, dtype=np.float64)
    probs = 1.0 / ranks
    return rng.choice(vocab_size, size=num_tokens, p=probs / probs.sum()).astype(np.int64)


def window_batches(stream: np.ndarray, batch_size: int, seq_length: int, seed: int
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (tokens, labels) batches of windows in a seeded order; labels are shifted by one."""
    num_windows = (stream.size - 1) // seq_length
    if num_windows < batch_size:
        raise ValueError(f"{stream.size} tokens make {num_windows} windows of {seq_length}; "
                         f"need at least train.micro_batch_size={batch_size}")
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(num_windows)
        for start in range(0, num_windows - batch_size + 1, batch_size):
            idx = order[start:start + batch_size] * seq_length
            window = np.stack([stream[i:i + seq_length + 1] for i in idx])
            yield torch.from_numpy(window[:, :-1]).contiguous(), torch.from_numpy(window[:, 1:]).contiguous()


def fixed_batches(stream: np.ndarray, batch_size: int, seq_length: int, count: int
                  ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``count`` consecutive batches (held-out evaluation: same for every model)."""
    needed = count * batch_size * seq_length + 1
    if stream.size < needed:
        raise ValueError(f"held-out stream has {stream.size} tokens, {needed} needed")
    out = []
    for b in range(count):
        rows = [stream[(b * batch_size + r) * seq_length:(b * batch_size + r + 1) * seq_length + 1]
                for r in range(batch_size)]
        window = torch.from_numpy(np.stack(rows))
        out.append((window[:, :-1].contiguous(), window[:, 1:].contiguous()))
    return out
