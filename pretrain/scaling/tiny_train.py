"""A single-process training loop over megatron's Tele-FLM model with μP param groups.

Why not the full trainer: the coordinate check needs forward hooks on every
block at several widths inside one process, and the loss-prediction benchmark
trains many tiny models back to back on a 2-core CPU where process start-up
and checkpointing would dominate.  The model (``pretrain.model.teleflm.build_model``),
the μP init and the μP LRs (``pretrain.model.mup``) are the trainer's own; only the
loop is simpler: plain torch Adam, TP1/PP1, one micro-batch per step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from omegaconf import DictConfig

from pretrain.model import mup


def scheduled_lr(max_lr: float, min_lr: float, step: int, warmup: int, decay_iters: int, style: str) -> float:
    """megatron's OptimizerParamScheduler formula (linear warm-up, then cosine/constant)."""
    if warmup > 0 and step <= warmup:
        return max_lr * step / warmup
    if style == "constant":
        return max_lr
    if step > decay_iters:
        return min_lr
    ratio = (step - warmup) / max(1, decay_iters - warmup)
    if style == "cosine":
        return min_lr + 0.5 * (math.cos(math.pi * ratio) + 1.0) * (max_lr - min_lr)
    if style == "linear":
        return min_lr + (1.0 - ratio) * (max_lr - min_lr)
    raise ValueError(f"train.lr_decay_style must be cosine|linear|constant here, got {style!r}")


@dataclass
class ActivationProbe:
    """Mean |x| of named module outputs on each recorded forward pass (coordinate check)."""

    records: list[dict[str, float]] = field(default_factory=list)
    _current: dict[str, float] = field(default_factory=dict)
    _handles: list = field(default_factory=list)

    def attach(self, model: torch.nn.Module) -> None:
        def hook_for(label: str):
            def hook(_module, _inputs, output):
                tensor = output[0] if isinstance(output, tuple) else output
                self._current[label] = float(tensor.detach().abs().mean())
            return hook

        targets: list[tuple[str, torch.nn.Module]] = [("embedding", model.embedding)]
        for i, layer in enumerate(model.decoder.layers):
            targets += [(f"layer{i}.attn", layer.self_attention), (f"layer{i}.mlp", layer.mlp)]
        targets.append(("logits", model.output_layer))
        for label, module in targets:
            self._handles.append(module.register_forward_hook(hook_for(label)))

    def commit(self) -> None:
        self.records.append(dict(self._current))
        self._current = {}

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def build_single_process_model(cfg: DictConfig) -> torch.nn.Module:
    from pretrain.model.teleflm import build_model
    from pretrain.scaling.local_world import ensure_single_process_world

    ensure_single_process_world(seed=cfg.train.seed)
    return build_model(cfg, pre_process=True, post_process=True)


def num_parameters(model: torch.nn.Module, non_embedding: bool = True) -> int:
    """Parameter count; ``non_embedding`` drops the input embedding (Kaplan et al.'s N)."""
    return sum(p.numel() for name, p in model.named_parameters()
               if not (non_embedding and "word_embeddings" in name))


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    model.eval()
    losses = []
    for tokens, labels in batches:
        positions = torch.arange(tokens.size(1)).unsqueeze(0).expand_as(tokens)
        losses.append(float(model(tokens, positions, None, labels=labels).mean()))
    model.train()
    return sum(losses) / len(losses)


def train(cfg: DictConfig, model: torch.nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
          steps: int, probe: ActivationProbe | None = None, clip_grad: float | None = None,
          on_step: Callable[[dict], None] | None = None) -> list[dict]:
    """Train ``steps`` Adam steps; returns per-step metrics (step, loss, grad_norm, lr, seconds).

    Schedule and Adam settings come from ``cfg.train`` (lr_warmup_iters,
    lr_decay_style, lr_decay_iters, adam_beta1/2, adam_eps, weight_decay);
    ``clip_grad`` None means ``cfg.train.clip_grad`` (0 disables clipping).
    """
    t = cfg.train
    groups = mup.torch_param_groups(cfg, model)
    optimizer = torch.optim.AdamW(
        [{k: v for k, v in g.items() if k != "names"} for g in groups],
        betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps, weight_decay=t.weight_decay)
    clip = float(t.clip_grad if clip_grad is None else clip_grad)
    warmup = t.lr_warmup_iters
    decay_iters = t.lr_decay_iters or steps
    history = []
    model.train()
    for step in range(1, steps + 1):
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = scheduled_lr(group["max_lr"], group["min_lr"], step, warmup, decay_iters,
                                       str(t.lr_decay_style))
        tokens, labels = next(batches)
        positions = torch.arange(tokens.size(1)).unsqueeze(0).expand_as(tokens)
        loss = model(tokens, positions, None, labels=labels).mean()
        if probe is not None:
            probe.commit()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        else:
            grad_norm = float(torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))
        optimizer.step()
        record = {"step": step, "loss": float(loss), "grad_norm": grad_norm,
                  "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started}
        history.append(record)
        if on_step is not None:
            on_step(record)
    return history
