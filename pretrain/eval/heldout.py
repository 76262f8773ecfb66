"""Held-out loss, perplexity and bits per byte per language and per source, under any TP/PP.

The data stage carves a held-out split that is never trained on; the tokenizer
stage encodes it into one indexed dataset per language and per source and
records the UTF-8 bytes of each (``manifest.json``: ``heldout.by_lang`` and
``heldout.by_source``). Here every held-out document is scored once, whole,
with the window convention of :mod:`pretrain.eval.bpb` (EOD as context, every token
including the final EOD predicted), so the BPB the trainer logs equals what
``python -m pretrain.eval.hf_bpb`` computes on the exported Hugging Face model.

Windows are padded to the model's sequence length (loss mask 0 on padding) so
they go through megatron's own pipeline schedule with ``forward_only=True``;
data-parallel ranks take interleaved windows and the sums are all-reduced.
The same passes also sum the loss by position in the window (:mod:`pretrain.eval.positions`).
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
import torch.distributed as dist

from pretrain.eval.bpb import Score, document_windows
from pretrain.eval.positions import REPORT_KEY, bucket_rows, bucketed_forward_step, position_edges


def load_windows(prefix: str, eod_id: int, seq_length: int, max_documents: int | None) -> list[tuple[list[int], list[int]]]:
    """All scoring windows of an indexed dataset's documents (each document ends with EOD)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(prefix, multimodal=False, mmap=True)
    count = len(dataset) if max_documents is None else min(len(dataset), max_documents)
    windows: list[tuple[list[int], list[int]]] = []
    for index in range(count):
        windows += document_windows(dataset[index].tolist(), eod_id, seq_length)
    return windows


def _window_batches(windows: list[tuple[list[int], list[int]]], micro_batch_size: int, seq_length: int,
                    eod_id: int) -> Iterator[dict[str, torch.Tensor]]:
    for start in range(0, len(windows), micro_batch_size):
        chunk = windows[start:start + micro_batch_size]
        tokens = torch.full((micro_batch_size, seq_length), eod_id, dtype=torch.long)
        labels = torch.full((micro_batch_size, seq_length), eod_id, dtype=torch.long)
        mask = torch.zeros((micro_batch_size, seq_length), dtype=torch.float)
        for row, (inputs, targets) in enumerate(chunk):
            tokens[row, :len(inputs)] = torch.tensor(inputs)
            labels[row, :len(targets)] = torch.tensor(targets)
            mask[row, :len(targets)] = 1.0
        positions = torch.arange(seq_length).unsqueeze(0).expand(micro_batch_size, -1).clone()
        yield {"tokens": tokens, "labels": labels, "loss_mask": mask, "position_ids": positions}


def score_dataset(forward_backward, model: list, forward_step, windows: list, micro_batch_size: int,
                  seq_length: int, eod_id: int, buckets: int = 0) -> tuple[float, int, list[list[float]]]:
    """Summed nats and predicted-token count over ``windows``, on every rank, and per position
    bucket ``[nats, tokens]`` when ``forward_step`` reports them (``buckets`` of them)."""
    from megatron.core import parallel_state

    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    # The interleaved (virtual-stage) schedule wants whole groups of PP microbatches per rank.
    pp_size = parallel_state.get_pipeline_model_parallel_world_size()
    per_step = micro_batch_size * dp_size * pp_size
    padded = windows + [([eod_id], [])] * (-len(windows) % per_step)  # empty targets: mask 0
    mine = padded[dp_rank::dp_size]
    num_microbatches = max(1, len(mine) // micro_batch_size)
    reports: list[dict] = []
    if mine:
        batches = list(_window_batches(mine, micro_batch_size, seq_length, eod_id))
        reports = forward_backward(
            forward_step_func=forward_step, data_iterator=[iter(batches) for _ in model],
            model=model, num_microbatches=num_microbatches, seq_length=seq_length,
            micro_batch_size=micro_batch_size, forward_only=True)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    total = torch.zeros(2 + 2 * buckets, dtype=torch.float64, device=device)
    if parallel_state.is_pipeline_last_stage(ignore_virtual=True) and \
            parallel_state.get_tensor_model_parallel_rank() == 0:
        for item in reports:
            total[:2] += item["lm loss"].to(total)
            if buckets:
                total[2:] += item[REPORT_KEY].reshape(-1).to(total)
    dist.all_reduce(total)
    return float(total[0]), int(round(float(total[1]))), total[2:].reshape(buckets, 2).tolist()


class HeldoutEvaluator:
    """Scores the manifest's held-out datasets by language and by source."""

    def __init__(self, manifest: dict[str, Any], seq_length: int, micro_batch_size: int,
                 max_documents: int | None = None, position_buckets: list[int] | None = None) -> None:
        self.eod_id = int(manifest["eod_id"])
        self.seq_length = seq_length
        self.micro_batch_size = micro_batch_size
        heldout = manifest.get("heldout") or {}
        self.groups: dict[str, dict[str, dict]] = {
            kind: {name: info for name, info in sorted((heldout.get(kind) or {}).items())
                   if info.get("documents", 0) > 0 and info.get("bytes", 0) > 0}
            for kind in ("by_lang", "by_source")}
        self._windows: dict[str, list] = {}
        self.max_documents = max_documents
        self.position_edges = position_edges(seq_length, position_buckets)  # pretrain.eval.positions

    @property
    def empty(self) -> bool:
        return not any(self.groups.values())

    def _windows_for(self, prefix: str) -> list:
        if prefix not in self._windows:
            self._windows[prefix] = load_windows(prefix, self.eod_id, self.seq_length, self.max_documents)
        return self._windows[prefix]

    @torch.no_grad()
    def evaluate(self, forward_backward, model: list, forward_step) -> dict[str, dict[str, dict]]:
        for chunk in model:
            chunk.eval()
        results: dict[str, dict[str, dict]] = {}
        forward_step = bucketed_forward_step(forward_step, self.position_edges)
        for kind, datasets in self.groups.items():
            results[kind] = {}
            for name, info in datasets.items():
                nats, tokens, sums = score_dataset(forward_backward, model, forward_step,
                                                   self._windows_for(info["prefix"]), self.micro_batch_size,
                                                   self.seq_length, self.eod_id, len(self.position_edges) - 1)
                # Byte counts are for whole documents: only valid when every document was scored.
                whole = self.max_documents is None or self.max_documents >= info["documents"]
                score = Score(nats=nats, tokens=tokens, bytes=int(info["bytes"]) if whole else 0,
                              documents=int(info["documents"]))
                row = score.as_dict() if whole else {"loss": score.loss, "perplexity": score.perplexity,
                                                     "bpb": None, "tokens": tokens}
                row["positions"] = bucket_rows(self.position_edges, sums, tokens, score.bytes or None)
                results[kind][name] = row
        for chunk in model:
            chunk.train()
        return results


def format_table(results: dict[str, dict[str, dict]]) -> str:
    lines = [f"{'group':<10} {'name':<20} {'loss':>8} {'ppl':>10} {'BPB':>8} {'tokens':>9}"]
    for kind, rows in results.items():
        for name, row in rows.items():
            bpb = f"{row['bpb']:.4f}" if row.get("bpb") is not None else "n/a"
            lines.append(f"{kind[3:]:<10} {name:<20} {row['loss']:>8.4f} {row['perplexity']:>10.2f} "
                         f"{bpb:>8} {row['tokens']:>9}")
    return "\n".join(lines)
