"""Held-out loss by position in the window: does a long-context model use its context?

A long-context stage pays for 8x longer sequences because tokens late in a window
should be predicted better than tokens early in it (more context). The held-out
evaluator (:mod:`pretrain.eval.heldout`) scores each document in windows of the
model's sequence length; a token at row position ``p`` has ``p`` tokens of context
before it in its window. Summing its loss into position buckets ``[0, 512)``,
``[512, 1024)``, ... answers the question with the same forward passes the BPB
already costs: the loss function is wrapped, nothing is scored twice.

Per bucket the evaluator reports the token loss and a BPB. Which bytes a token covers
is not known at scoring time (the windows are token ids), so a bucket's BPB uses its
dataset's mean bytes per token: ``bpb = nats / ln 2 * tokens_total / bytes_total / tokens``.
The buckets' token-weighted mean of loss (and of BPB) is the dataset's own loss (BPB).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

REPORT_KEY = "position buckets"


def position_edges(seq_length: int, boundaries: Sequence[int] | None = None) -> list[int]:
    """Bucket edges ``[0, b1, ..., seq_length]``.

    ``boundaries`` (``train.heldout_position_buckets``) are the inner edges; by default they
    double from ``seq_length / 64`` (32k: 512, 1024, ..., 16384; 4k: 64, ..., 2048), seven
    buckets at any length, so a 4k and a 32k stage are plotted the same way.
    """
    if boundaries is None:
        inner = [seq_length >> k for k in range(6, 0, -1) if seq_length >> k > 0]
    else:
        inner = [int(b) for b in boundaries]
    if any(b <= 0 or b >= seq_length for b in inner) or inner != sorted(set(inner)):
        raise ValueError(f"train.heldout_position_buckets={list(inner)}: inner edges must be increasing, "
                         f"distinct and inside (0, model.seq_length={seq_length})")
    return [0, *dict.fromkeys(inner), seq_length]


def bucket_index(edges: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """For every position in ``[0, seq_length)`` the bucket it falls in."""
    import torch  # here, not at module level: config validation (position_edges) runs in the launching
    #               process of ``python -m pretrain``, which has no other use for torch

    positions = torch.arange(edges[-1], device=device)
    return torch.bucketize(positions, torch.tensor(edges[1:-1], device=device), right=True)


def bucket_sums(token_losses: torch.Tensor, loss_mask: torch.Tensor, edges: Sequence[int]) -> torch.Tensor:
    """``[buckets, 2]``: summed nats and predicted-token count per position bucket of a ``[b, s]`` batch."""
    import torch

    mask = loss_mask.float().reshape(token_losses.shape)
    nats = (token_losses.float() * mask).sum(0)
    counts = mask.sum(0)
    index = bucket_index(edges, token_losses.device)[: nats.shape[0]]
    out = torch.zeros(len(edges) - 1, 2, dtype=torch.float32, device=token_losses.device)
    out[:, 0].index_add_(0, index, nats)
    out[:, 1].index_add_(0, index, counts)
    return out


def _report_with_buckets(loss: Callable, loss_mask: torch.Tensor, edges: Sequence[int],
                         output_tensor: torch.Tensor) -> tuple:
    loss_sum, num_tokens, report = loss(output_tensor)
    return loss_sum, num_tokens, {**report, REPORT_KEY: bucket_sums(output_tensor.detach(), loss_mask, edges)}


def bucketed_forward_step(forward_step: Callable, edges: Sequence[int]) -> Callable:
    """megatron's ``forward_step_func`` whose loss report also carries :func:`bucket_sums`.

    The batch is read here and handed on, so the wrapped step and the bucket sums see the same
    loss mask; the per-token losses are the model's own output (no second forward pass).
    """
    def step(data_iterator: Iterator, model: torch.nn.Module):
        batch = next(data_iterator)
        output, loss = forward_step(iter([batch]), model)
        return output, partial(_report_with_buckets, loss, batch["loss_mask"].to(output.device), edges)

    return step


def bucket_rows(edges: Sequence[int], sums: Sequence[Sequence[float]], total_tokens: int,
                total_bytes: int | None) -> list[dict[str, Any]]:
    """The ``positions`` rows of one held-out set (``bpb`` null when the byte count is not valid)."""
    rows = []
    for (start, end), (nats, tokens) in zip(zip(edges[:-1], edges[1:]), sums):
        tokens = int(round(tokens))
        loss = nats / tokens if tokens else None
        bpb = (nats / math.log(2) * total_tokens / total_bytes / tokens
               if tokens and total_bytes and total_tokens else None)
        rows.append({"start": start, "end": end, "loss": loss, "bpb": bpb, "tokens": tokens})
    return rows


def plot_positions(results: dict[str, dict[str, dict]], step: int, path: Path) -> bool:
    """Loss per position bucket for every language (and source), one line each; False if none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [(f"{kind[3:]}:{name}", row["positions"]) for kind, rows in results.items()
             for name, row in rows.items() if row.get("positions")]
    if not lines:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, buckets in lines:
        kept = [b for b in buckets if b["tokens"]]
        ax.plot([max(b["start"], 0.5 * b["end"]) for b in kept], [b["loss"] for b in kept], "o-", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("position in the window (bucket start; log scale)")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title(f"Held-out loss by position, step {step}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
