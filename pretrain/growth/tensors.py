"""Grow checkpoint tensors, whole or one region at a time: MSG's "copy into the leading slice".

Works on the layout-independent tensors a megatron dist checkpoint holds: the
model's parameters, with the layers stacked on a leading axis, and — for the
distributed optimizer's ``fully_reshardable`` format and the plain optimizer
alike — ``optimizer.state.<kind>.<param key>`` tensors of the same shapes
(fp32 master copy, Adam moments).

Every tensor is, per layer, a ``[rows, cols]`` matrix (norm gains: one row).
Growth keeps the old columns as the leading ``[:cols_old]`` slice and the old
rows as a few row blocks (:class:`KeyRule`):

* ``linear_qkv.weight`` rows are grouped per query group (``[q heads of the
  group, k, v]`` × head dim).  Heads per group and head dim are fixed, so new
  groups append rows: the old rows are the leading block.
* ``linear_fc1.weight`` is SwiGLU's ``[gate; up]`` stacked on the rows: old
  units are two blocks, ``[:ffn_old]`` of each half.

New entries: parameters from :func:`pretrain.growth.fresh.fresh_entries`
(init rule of the new width, a pure function of the element's global index),
norm gains 1; Adam moments 0 (the step count lives in the optimizer's param
groups and is kept).  :func:`grown_region` builds any rectangle of one layer
of a grown tensor from a reader of the old tensor, so the one-process growth
(:func:`grow_state`, whole tensors) and the streaming growth
(:mod:`pretrain.growth.streaming`, one target slice at a time) are the same
code and give bitwise identical results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from omegaconf import DictConfig

from pretrain.growth.fresh import fresh_entries
from pretrain.growth.spec import GrowthSpec

OPTIMIZER_PREFIX = "optimizer.state."
MOMENT_KINDS = ("exp_avg", "exp_avg_sq")
PARAM_COPY_KINDS = ("param", "fp32_param")
LAYER_STACKED_PREFIX = "decoder.layers."

OldReader = Callable[[int | None, slice, slice], torch.Tensor]
"""(old layer or None, old rows, old cols) -> that ``[rows, cols]`` block of the old tensor."""


def split_key(key: str) -> tuple[str, str]:
    """``optimizer.state.exp_avg.<model key>`` -> ("exp_avg", model key); model keys -> ("model", key)."""
    if key.startswith(OPTIMIZER_PREFIX):
        kind, _, model_key = key[len(OPTIMIZER_PREFIX):].partition(".")
        if kind not in MOMENT_KINDS + PARAM_COPY_KINDS:
            raise ValueError(f"checkpoint tensor {key!r}: unknown optimizer state {kind!r}")
        return kind, model_key
    return "model", key


@dataclass(frozen=True)
class KeyRule:
    """How one checkpoint tensor grows: per layer an ``[old_rows, old_cols] -> [new_rows, new_cols]`` matrix.

    ``row_blocks``: ``(new_start, old_start, length)`` row runs the old tensor
    fills; old columns are the leading ``[:old_cols]``.  ``vector``: the tensor
    is 1-D per layer (one row).
    """

    key: str
    role: str
    model_key: str
    layered: bool
    old_layers: int
    new_layers: int
    old_rows: int
    new_rows: int
    old_cols: int
    new_cols: int
    row_blocks: tuple[tuple[int, int, int], ...]
    vector: bool = False

    def _shape(self, layers: int, rows: int, cols: int) -> tuple[int, ...]:
        per_layer = (cols,) if self.vector else (rows, cols)
        return ((layers,) if self.layered else ()) + per_layer

    @property
    def old_shape(self) -> tuple[int, ...]:
        return self._shape(self.old_layers, self.old_rows, self.old_cols)

    @property
    def new_shape(self) -> tuple[int, ...]:
        return self._shape(self.new_layers, self.new_rows, self.new_cols)


def rule_for(key: str, old_shape: tuple[int, ...], spec: GrowthSpec) -> KeyRule:
    """The growth rule of one checkpoint key; refuses unknown keys and shapes that disagree with the spec."""
    role, model_key = split_key(key)
    old, new = spec.old, spec.new
    layered = model_key.startswith(LAYER_STACKED_PREFIX)
    vector = False
    if model_key.endswith("linear_qkv.weight"):
        per_group = old.heads_per_group + 2
        rows = (old.num_query_groups * per_group * old.kv_channels, new.num_query_groups * per_group * new.kv_channels)
        cols, blocks = (old.hidden_size, new.hidden_size), ((0, 0, rows[0]),)
    elif model_key.endswith("linear_proj.weight"):
        rows = (old.hidden_size, new.hidden_size)
        cols = (old.num_attention_heads * old.kv_channels, new.num_attention_heads * new.kv_channels)
        blocks = ((0, 0, rows[0]),)
    elif model_key.endswith("linear_fc1.weight"):
        rows, cols = (2 * old.ffn_hidden_size, 2 * new.ffn_hidden_size), (old.hidden_size, new.hidden_size)
        blocks = ((0, 0, old.ffn_hidden_size), (new.ffn_hidden_size, old.ffn_hidden_size, old.ffn_hidden_size))
    elif model_key.endswith("linear_fc2.weight"):
        rows, cols = (old.hidden_size, new.hidden_size), (old.ffn_hidden_size, new.ffn_hidden_size)
        blocks = ((0, 0, rows[0]),)
    elif model_key.endswith("layer_norm_weight") or model_key == "decoder.final_layernorm.weight":
        rows, cols, blocks, vector = (1, 1), (old.hidden_size, new.hidden_size), ((0, 0, 1),), True
    elif model_key in ("embedding.word_embeddings.weight", "output_layer.weight"):
        vocab = int(old_shape[0]) if old_shape else 0
        rows, cols, blocks = (vocab, vocab), (old.hidden_size, new.hidden_size), ((0, 0, vocab),)
    else:
        raise ValueError(f"checkpoint tensor {key!r}: no growth rule (bias or a TransformerEngine-only "
                         "tensor?); pretrain/growth/tensors.py knows the Tele-FLM local-spec tensors only")
    rule = KeyRule(key=key, role=role, model_key=model_key, layered=layered,
                   old_layers=old.num_layers if layered else 0, new_layers=new.num_layers if layered else 0,
                   old_rows=rows[0], new_rows=rows[1], old_cols=cols[0], new_cols=cols[1],
                   row_blocks=blocks, vector=vector)
    if tuple(old_shape) != rule.old_shape:
        raise ValueError(f"checkpoint tensor {key!r} has shape {tuple(old_shape)}, the old model config "
                         f"implies {rule.old_shape}: is run_config.yaml the checkpoint's?")
    return rule


def _span(index: slice, size: int) -> tuple[int, int]:
    start, stop, step = index.indices(size)
    if step != 1:
        raise ValueError(f"growth regions are contiguous (got step {step})")
    return start, max(start, stop)


def old_blocks(rule: KeyRule, layer: int | None, rows: slice, cols: slice,
               spec: GrowthSpec) -> list[tuple[int | None, slice, slice, slice, slice]]:
    """The old blocks a region of the grown tensor copies: ``(old layer, old rows, old cols, rows, cols)``.

    The last two are where each block lands in the region.  Empty for fresh
    layers, for Adam moments of new layers and for regions of new columns only.
    """
    r0, r1 = _span(rows, rule.new_rows)
    c0, c1 = _span(cols, rule.new_cols)
    kind, source = spec.layer_sources[layer] if rule.layered else ("old", None)
    if kind == "random" or (rule.role in MOMENT_KINDS and kind != "old") or c0 >= rule.old_cols:
        return []
    old_c1 = min(c1, rule.old_cols)
    blocks = []
    for new_start, old_start, length in rule.row_blocks:
        lo, hi = max(r0, new_start), min(r1, new_start + length)
        if lo < hi:
            blocks.append((source, slice(old_start + lo - new_start, old_start + hi - new_start),
                           slice(c0, old_c1), slice(lo - r0, hi - r0), slice(0, old_c1 - c0)))
    return blocks


def grown_region(rule: KeyRule, layer: int | None, rows: slice, cols: slice, read_old: OldReader,
                 spec: GrowthSpec, new_model_cfg: DictConfig, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """``[rows, cols]`` of layer ``layer`` (None: not layer-stacked) of the grown tensor; 1-D for vectors.

    Old entries come from ``read_old`` (only the blocks :func:`old_blocks`
    names); new entries from the new width's init (a function of the global
    element index), ones for norm gains, zeros for Adam moments.  New layers:
    copies of their (widened) source layer, or fresh, with fresh Adam state.
    """
    r0, r1 = _span(rows, rule.new_rows)
    c0, c1 = _span(cols, rule.new_cols)
    kind, source = spec.layer_sources[layer] if rule.layered else ("old", None)
    moments = rule.role in MOMENT_KINDS
    blocks = old_blocks(rule, layer, rows, cols, spec)
    covered = sum((b[3].stop - b[3].start) * (b[4].stop - b[4].start) for b in blocks) == (r1 - r0) * (c1 - c0)
    if covered:  # old entries only (e.g. depth growth's old layers): nothing fresh to draw
        out = torch.empty((r1 - r0, c1 - c0), dtype=dtype)
    elif moments:
        out = torch.zeros((r1 - r0, c1 - c0), dtype=dtype)
    elif kind == "random":
        out = fresh_entries(rule.model_key, (rule.new_rows, rule.new_cols), (slice(r0, r1), slice(c0, c1)),
                            new_model_cfg, seed, f"layer{layer}", dtype)
    else:  # width entries of the (widened) old layer `source`, indexed in the widened [old layers, ...] tensor
        lead = ((rule.old_layers,), (slice(source, source + 1),)) if rule.layered else ((), ())
        out = fresh_entries(rule.model_key, lead[0] + (rule.new_rows, rule.new_cols),
                            lead[1] + (slice(r0, r1), slice(c0, c1)), new_model_cfg, seed, "width", dtype)
        out = out.reshape(r1 - r0, c1 - c0)
    for old_layer, old_rows, old_cols, into_rows, into_cols in blocks:
        piece = read_old(old_layer, old_rows, old_cols).to(dtype)
        if rule.model_key == "output_layer.weight" and spec.logit_scale != 1.0:
            # μP logit multiplier output_mult/width_mult shrinks with width: fold the ratio into
            # the old columns (gradient scales by 1/c, so Adam moments by 1/c and 1/c²).
            power = {"exp_avg": -1, "exp_avg_sq": -2}.get(rule.role, 1)
            piece = piece.clone()
            piece *= spec.logit_scale ** power
        out[into_rows, into_cols] = piece
    return out[0] if rule.vector else out


def whole_reader(rule: KeyRule, tensor: torch.Tensor) -> OldReader:
    """Reads blocks of an old tensor held whole in memory."""
    def read(layer: int | None, rows: slice, cols: slice) -> torch.Tensor:
        matrix = tensor[layer] if rule.layered else tensor
        return matrix.reshape(rule.old_rows, rule.old_cols)[rows, cols]
    return read


def grow_state(tensors: dict[str, torch.Tensor], spec: GrowthSpec, new_model_cfg: DictConfig,
               seed: int) -> dict[str, torch.Tensor]:
    """Every checkpoint tensor at the new shape (one process, whole tensors).

    A parameter and its fp32 master copy grow identically (new entries are
    seeded by the model key).
    """
    grown = {}
    for key, tensor in tensors.items():
        rule = rule_for(key, tuple(tensor.shape), spec)
        read = whole_reader(rule, tensor)
        whole = slice(None)
        if rule.layered:
            grown[key] = torch.stack([grown_region(rule, i, whole, whole, read, spec, new_model_cfg, seed,
                                                   tensor.dtype) for i in range(rule.new_layers)])
        else:
            grown[key] = grown_region(rule, None, whole, whole, read, spec, new_model_cfg, seed, tensor.dtype)
    return grown
