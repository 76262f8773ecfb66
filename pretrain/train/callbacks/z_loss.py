"""PaLM's z-loss, ``train.z_loss`` · log²Z per token, Z over the whole (vocab-parallel) vocabulary.

A forward hook on the output layer keeps log Z of each training microbatch;
the loss adds the term to what is trained (not to the reported cross entropy).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from pretrain.train.callback import Callback, TrainerView



def log_z(logits: torch.Tensor, tp_group=None) -> torch.Tensor:
    """log Σ_v exp(logit_v) per token for [s, b, v/tp] vocab-parallel logits -> [b, s].

    The max is all-reduced (MAX, no gradient needed: log Z does not depend on it) and the
    sum of exponentials is summed over the TP group with megatron's differentiable
    reduce (forward all-reduce, backward identity), so the result and its gradient
    equal the TP1 logsumexp.
    """
    lf = logits.float()
    m = lf.detach().max(dim=-1, keepdim=True).values
    tp = dist.get_world_size(tp_group) if tp_group is not None else 1
    if tp > 1:
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=tp_group)
    sumexp = torch.exp(lf - m).sum(dim=-1)
    if tp > 1:
        from megatron.core.tensor_parallel.mappings import reduce_from_tensor_model_parallel_region
        sumexp = reduce_from_tensor_model_parallel_region(sumexp)
    return (m.squeeze(-1) + torch.log(sumexp)).transpose(0, 1).contiguous()


def innermost(chunk: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel inside DDP / Float16Module / a DeepSpeed engine."""
    while hasattr(chunk, "module"):
        chunk = chunk.module
    return chunk


class ZLoss(Callback):
    def __init__(self, coefficient: float) -> None:
        self.coefficient = coefficient
        self.pending: list[torch.Tensor] = []

    def on_start(self, trainer: TrainerView) -> None:
        for chunk in trainer.step.model:
            inner = innermost(chunk)
            if getattr(inner, "post_process", False):
                inner.output_layer.register_forward_hook(self._tap)
        trainer.step.hooks.extra_loss.append(self._term)

    def _tap(self, module, _inputs, output) -> None:
        if module.training:
            from megatron.core import parallel_state

            logits = output[0] if isinstance(output, tuple) else output
            group = parallel_state.get_tensor_model_parallel_group() \
                if parallel_state.get_tensor_model_parallel_world_size() > 1 else None
            self.pending.append(log_z(logits, group))

    def _term(self, loss_mask: torch.Tensor) -> torch.Tensor | None:
        if not self.pending:
            return None
        z = self.pending.pop(0)
        return self.coefficient * torch.sum(z.view(-1) ** 2 * loss_mask.view(-1))
