"""The forward step and per-token loss both backends train with, and the hooks features use.

Fault injection and z-loss change what one training forward pass computes.
Instead of module globals read inside the loss, each backend owns one
:class:`ForwardHooks`; a callback adds its transform for as long as it needs it.
Evaluation passes no hooks, so held-out numbers never see them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterator

import torch

from pretrain.train.setup import device

Batch = dict[str, torch.Tensor]


@dataclass
class ForwardHooks:
    """What callbacks may change in a training forward pass."""

    batch: list[Callable[[Batch], Batch]] = field(default_factory=list)
    """Applied to every microbatch before the model sees it (fault ``corrupt_batch``)."""
    token_losses: list[Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=list)
    """Applied to the per-token cross entropy, reported and trained (fault ``nan``)."""
    extra_loss: list[Callable[[torch.Tensor], torch.Tensor | None]] = field(default_factory=list)
    """Given the loss mask, a summed term added to the trained loss only (z-loss)."""


NO_HOOKS = ForwardHooks()


def masked_loss(loss_mask: torch.Tensor, output_tensor: torch.Tensor, hooks: ForwardHooks = NO_HOOKS):
    """(summed token loss to train on, token count, the cross entropy to report)."""
    losses = output_tensor.float()
    for transform in hooks.token_losses:
        losses = transform(losses)
    loss_mask = loss_mask.float()
    loss_sum = torch.sum(losses.view(-1) * loss_mask.view(-1))
    num_tokens = loss_mask.sum().to(torch.int)
    report = torch.stack([loss_sum.detach().clone(), loss_mask.sum().detach()])  # CE only
    for term in hooks.extra_loss:
        extra = term(loss_mask)
        if extra is not None:
            loss_sum = loss_sum + extra
    return loss_sum, num_tokens, report


def loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor, hooks: ForwardHooks = NO_HOOKS):
    """megatron's loss contract: (sum of token losses, token count, report); it averages per token."""
    loss_sum, num_tokens, report = masked_loss(loss_mask, output_tensor, hooks)
    return loss_sum, num_tokens, {"lm loss": report}


def prepare_batch(batch: Batch, hooks: ForwardHooks = NO_HOOKS) -> Batch:
    batch = {k: v.to(device(), non_blocking=True) for k, v in batch.items()}
    for transform in hooks.batch:
        batch = transform(batch)
    return batch


def forward_step(data_iterator: Iterator, model: torch.nn.Module, hooks: ForwardHooks = NO_HOOKS):
    """megatron's ``forward_step_func``: one microbatch through this rank's chunk."""
    batch = prepare_batch(next(data_iterator), hooks)
    # attention_mask: only with model.document_mask (per-document, True = masked); else causal
    output = model(batch["tokens"], batch["position_ids"], batch.get("attention_mask"), labels=batch["labels"])
    return output, partial(loss_func, batch["loss_mask"], hooks=hooks)
