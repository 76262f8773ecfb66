"""Bits per byte: the language-modelling measure that compares models across tokenizers.

Loss per token depends on how much text a token covers, so two models with
different tokenizers cannot be compared on it. Bits per byte (BPB) divides the
total information the model assigns to a text by the text's UTF-8 size:

    BPB = (sum over predicted tokens of -ln p) / ln 2 / (UTF-8 bytes of the text)

The scoring convention is fixed here, once, and used both for our megatron
checkpoints and for their Hugging Face exports so that the two give the same
number on the same text:

- a document is scored as the token sequence ``encode(text) + [eod]``;
- the context before its first token is a single ``eod`` token (the trainer's
  packed sequences put an EOD before every document, so this is the context the
  model was trained with);
- every token of that sequence is predicted, the final EOD included: where a
  document ends is information the model must pay for;
- long documents are cut into windows of ``max_len`` predictions; each window
  starts with the last token of the previous one as context.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
"""Maps input ids [batch, time] to logits [batch, time, vocab] (any vocab padding allowed)."""


@dataclass
class Score:
    """Summed negative log-likelihood over some texts, with the sizes BPB needs."""

    nats: float = 0.0
    tokens: int = 0
    bytes: int = 0
    documents: int = 0

    def add(self, other: "Score") -> None:
        self.nats += other.nats
        self.tokens += other.tokens
        self.bytes += other.bytes
        self.documents += other.documents

    @property
    def loss(self) -> float:
        """Mean cross-entropy per predicted token, in nats."""
        return self.nats / self.tokens if self.tokens else float("nan")

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.tokens else float("nan")

    @property
    def bits_per_byte(self) -> float:
        return bits_per_byte(self.nats, self.bytes)

    def as_dict(self) -> dict:
        return {"loss": self.loss, "perplexity": self.perplexity, "bpb": self.bits_per_byte,
                "tokens": self.tokens, "bytes": self.bytes, "documents": self.documents}


def bits_per_byte(total_nats: float, total_bytes: int) -> float:
    """Convert summed natural-log loss over a text to bits per UTF-8 byte of that text."""
    if total_bytes <= 0:
        raise ValueError(f"bits per byte needs a positive byte count, got {total_bytes}")
    return total_nats / math.log(2) / total_bytes


def document_windows(doc_tokens: Sequence[int], eod_id: int, max_len: int) -> list[tuple[list[int], list[int]]]:
    """Split ``[eod] + doc_tokens`` into (inputs, targets) windows of at most ``max_len`` predictions.

    ``doc_tokens`` must already end with the EOD token (as in the indexed datasets).
    """
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    sequence = [eod_id, *doc_tokens]
    windows = []
    for start in range(0, len(sequence) - 1, max_len):
        chunk = sequence[start:start + max_len + 1]
        windows.append((chunk[:-1], chunk[1:]))
    return windows


def score_token_documents(logits_fn: LogitsFn, documents: Iterable[tuple[Sequence[int], int]], eod_id: int,
                          max_len: int, batch_size: int, vocab_size: int | None = None) -> Score:
    """Score documents given as (tokens ending with EOD, UTF-8 byte count of the text).

    Windows of several documents are batched with right padding; with a causal
    model, padding after the real tokens cannot change their logits, so no
    attention mask is needed and the same batches work for megatron and HF.
    ``vocab_size`` trims padded vocabulary columns so both see the same softmax.
    """
    total = Score()
    pending: list[tuple[list[int], list[int]]] = []

    def flush() -> None:
        if not pending:
            return
        width = max(len(inp) for inp, _ in pending)
        inputs = torch.full((len(pending), width), eod_id, dtype=torch.long)
        targets = torch.full((len(pending), width), -100, dtype=torch.long)
        for row, (inp, tgt) in enumerate(pending):
            inputs[row, :len(inp)] = torch.tensor(inp)
            targets[row, :len(tgt)] = torch.tensor(tgt)
        with torch.no_grad():
            logits = logits_fn(inputs).float()
        if vocab_size is not None:
            logits = logits[..., :vocab_size]
        nats = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=-100, reduction="sum")
        total.nats += float(nats)
        total.tokens += int((targets != -100).sum())
        pending.clear()

    for tokens, n_bytes in documents:
        total.documents += 1
        total.bytes += int(n_bytes)
        for window in document_windows(list(tokens), eod_id, max_len):
            pending.append(window)
            if len(pending) == batch_size:
                flush()
    flush()
    return total
