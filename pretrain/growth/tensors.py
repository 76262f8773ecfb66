"""Grow full (TP1-equivalent) checkpoint tensors: MSG's "copy into the leading slice".

Works on the layout-independent tensors a megatron dist checkpoint holds
(``load_plain_tensors``): the model's parameters, with the layers stacked on
a leading axis, and — for the distributed optimizer's ``fully_reshardable``
format and the plain optimizer alike — ``optimizer.state.<kind>.<param key>``
tensors of the same shapes (fp32 master copy, Adam moments).

Two megatron layouts matter when heads or FFN units are added:

* ``linear_qkv.weight`` rows are grouped per query group: for each group
  ``[q heads of the group, k, v]`` × head dim.  New groups go after the old
  ones, so the old rows are the leading ``[:groups_old]`` slice of the
  ``[groups, heads_per_group + 2, head_dim, hidden]`` view — not of the flat rows.
* ``linear_fc1.weight`` is SwiGLU's ``[gate; up]`` stacked on dim 0: the old
  units are ``[:, :ffn_old]`` of the ``[2, ffn, hidden]`` view.

New entries: parameters from ``init_method_for(new_model_cfg, kind)`` (μP
rules of the new width), norm gains 1; Adam moments 0 (the step count lives
in the optimizer's param groups and is kept).
"""

from __future__ import annotations

import hashlib
from typing import Callable

import torch
from omegaconf import DictConfig

from pretrain.growth.spec import GrowthSpec, Shape
from pretrain.model.teleflm import init_method_for, param_kind

OPTIMIZER_PREFIX = "optimizer.state."
MOMENT_KINDS = ("exp_avg", "exp_avg_sq")
PARAM_COPY_KINDS = ("param", "fp32_param")
LAYER_STACKED_PREFIX = "decoder.layers."


def split_key(key: str) -> tuple[str, str]:
    """``optimizer.state.exp_avg.<model key>`` -> ("exp_avg", model key); model keys -> ("model", key)."""
    if key.startswith(OPTIMIZER_PREFIX):
        kind, _, model_key = key[len(OPTIMIZER_PREFIX):].partition(".")
        if kind not in MOMENT_KINDS + PARAM_COPY_KINDS:
            raise ValueError(f"checkpoint tensor {key!r}: unknown optimizer state {kind!r}")
        return kind, model_key
    return "model", key


def _views(model_key: str, old: Shape, new: Shape, leading: int):
    """(reshape for old, reshape for new, slice of the new view the old tensor fills)."""
    lead = (slice(None),) * leading
    if model_key.endswith("linear_qkv.weight"):
        per_group = old.heads_per_group + 2
        return ((old.num_query_groups, per_group, old.kv_channels, old.hidden_size),
                (new.num_query_groups, per_group, new.kv_channels, new.hidden_size),
                lead + (slice(0, old.num_query_groups), slice(None), slice(None), slice(0, old.hidden_size)))
    if model_key.endswith("linear_proj.weight"):
        old_in = old.num_attention_heads * old.kv_channels
        return ((old.hidden_size, old_in), (new.hidden_size, new.num_attention_heads * new.kv_channels),
                lead + (slice(0, old.hidden_size), slice(0, old_in)))
    if model_key.endswith("linear_fc1.weight"):
        return ((2, old.ffn_hidden_size, old.hidden_size), (2, new.ffn_hidden_size, new.hidden_size),
                lead + (slice(None), slice(0, old.ffn_hidden_size), slice(0, old.hidden_size)))
    if model_key.endswith("linear_fc2.weight"):
        return ((old.hidden_size, old.ffn_hidden_size), (new.hidden_size, new.ffn_hidden_size),
                lead + (slice(0, old.hidden_size), slice(0, old.ffn_hidden_size)))
    if model_key.endswith("layer_norm_weight") or model_key == "decoder.final_layernorm.weight":
        return ((old.hidden_size,), (new.hidden_size,), lead + (slice(0, old.hidden_size),))
    if model_key in ("embedding.word_embeddings.weight", "output_layer.weight"):
        return ((-1, old.hidden_size), (-1, new.hidden_size), lead + (slice(None), slice(0, old.hidden_size)))
    raise ValueError(f"checkpoint tensor {model_key!r}: no growth rule (bias or a TransformerEngine-only "
                     "tensor?); pretrain/growth/tensors.py knows the Tele-FLM local-spec tensors only")


def _seed(seed: int, key: str, purpose: str) -> int:
    digest = hashlib.sha256(f"{seed}:{key}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _fresh(model_key: str, shape: tuple[int, ...], role: str, new_model_cfg: DictConfig, seed: int,
           purpose: str, dtype: torch.dtype) -> torch.Tensor:
    """New entries: μP init of the new width for parameters, zeros for Adam moments."""
    if role in MOMENT_KINDS:
        return torch.zeros(shape, dtype=dtype)
    tensor = torch.empty(shape, dtype=torch.float32)
    init: Callable = init_method_for(new_model_cfg, param_kind(model_key))
    init(tensor, torch.Generator().manual_seed(_seed(seed, model_key, purpose)))
    return tensor.to(dtype)


def grow_width(model_key: str, tensor: torch.Tensor, role: str, spec: GrowthSpec,
               new_model_cfg: DictConfig, seed: int) -> torch.Tensor:
    """Old tensor into the leading slice of a freshly initialised tensor of the new width."""
    leading = 1 if model_key.startswith(LAYER_STACKED_PREFIX) else 0
    old_view, new_view, where = _views(model_key, spec.old, spec.new, leading)
    lead_shape = tuple(tensor.shape[:leading])
    if old_view[0] == -1:  # vocab axis: unchanged
        old_view = (tensor.shape[leading],) + old_view[1:]
        new_view = (tensor.shape[leading],) + new_view[1:]
    old = tensor.reshape(lead_shape + old_view)
    grown = _fresh(model_key, lead_shape + new_view, role, new_model_cfg, seed, "width", tensor.dtype)
    grown[where] = old
    if model_key == "output_layer.weight" and spec.logit_scale != 1.0:
        # μP logit multiplier output_mult/width_mult shrinks with width: fold the ratio into
        # the old columns (gradient scales by 1/c, so Adam moments by 1/c and 1/c²).
        power = {"exp_avg": -1, "exp_avg_sq": -2}.get(role, 1)
        grown[where] *= spec.logit_scale ** power
    new_flat_shape = lead_shape + _flat(model_key, spec.new, tensor, leading)
    return grown.reshape(new_flat_shape)


def _flat(model_key: str, shape: Shape, tensor: torch.Tensor, leading: int) -> tuple[int, ...]:
    if model_key.endswith("linear_qkv.weight"):
        return (shape.num_query_groups * (shape.heads_per_group + 2) * shape.kv_channels, shape.hidden_size)
    if model_key.endswith("linear_proj.weight"):
        return (shape.hidden_size, shape.num_attention_heads * shape.kv_channels)
    if model_key.endswith("linear_fc1.weight"):
        return (2 * shape.ffn_hidden_size, shape.hidden_size)
    if model_key.endswith("linear_fc2.weight"):
        return (shape.hidden_size, shape.ffn_hidden_size)
    if model_key.endswith("layer_norm_weight") or model_key == "decoder.final_layernorm.weight":
        return (shape.hidden_size,)
    return (tensor.shape[leading], shape.hidden_size)


def grow_depth(model_key: str, widened: torch.Tensor, role: str, spec: GrowthSpec,
               new_model_cfg: DictConfig, seed: int) -> torch.Tensor:
    """Stack old, copied and fresh layers along the leading layer axis (new blocks: fresh Adam state)."""
    if not model_key.startswith(LAYER_STACKED_PREFIX) or not spec.new_layers:
        return widened
    layers = []
    for index, (kind, source) in enumerate(spec.layer_sources):
        if kind == "old":
            layers.append(widened[source])
        elif role in MOMENT_KINDS:
            layers.append(torch.zeros_like(widened[0]))
        elif kind == "copy":
            layers.append(widened[source].clone())
        else:
            layers.append(_fresh(model_key, tuple(widened.shape[1:]), role, new_model_cfg, seed,
                                 f"layer{index}", widened.dtype))
    return torch.stack(layers)


def grow_state(tensors: dict[str, torch.Tensor], spec: GrowthSpec, new_model_cfg: DictConfig,
               seed: int) -> dict[str, torch.Tensor]:
    """Every checkpoint tensor at the new shape; a parameter and its fp32 master copy grow identically."""
    grown = {}
    for key, tensor in tensors.items():
        role, model_key = split_key(key)
        # The fp32 master copy must equal the parameter: seed its new entries by the model key.
        widened = grow_width(model_key, tensor, role, spec, new_model_cfg, seed)
        grown[key] = grow_depth(model_key, widened, role, spec, new_model_cfg, seed)
    return grown
