"""Megatron-core (Tele-FLM) <-> Hugging Face Llama: names, layouts and multipliers.

Pure tensor functions, no I/O, so the export and the import are exact inverses
by construction and can be tested without files. See docs/export.md for the
table and the algebra.

* QKV: megatron stores ``linear_qkv.weight`` as [ng, (nq/ng + 2), d, hidden]
  flattened on dim 0: per query group, that group's query heads, then its key
  head, then its value head. HF keeps q_proj [nq*d, h], k_proj [ng*d, h],
  v_proj [ng*d, h] with heads in order, which is the same head order, so
  splitting the group axis is all that is needed (no RoPE permutation: both
  use the non-interleaved rotate-half convention).
* SwiGLU: ``linear_fc1.weight`` is [gate; up] on dim 0 (global, any TP).
* Multipliers: megatron computes ``embedding(x) * input_mult`` and
  ``(h @ W_out^T) * logit_mult`` with ``logit_mult = output_mult / width_mult``
  (muP) or ``output_mult``. Both are linear, so they fold exactly into
  embed_tokens and lm_head; the import divides them back out.
* Vocabulary: megatron pads rows to a multiple of divisible_by x TP. The HF
  model keeps only the real vocabulary (``model.vocab_size``): its logits equal
  megatron's on every real id and ``generate`` can never emit a padding id.
  The import pads with zero rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Checkpoint keys are megatron's sharded_state_dict keys: the local and the
# TransformerEngine specs both save the pre-attention/pre-MLP norms under the
# fused TE names, and every per-layer tensor is stacked on a leading layer axis.
EMBEDDING = "embedding.word_embeddings.weight"
FINAL_NORM = "decoder.final_layernorm.weight"
OUTPUT_LAYER = "output_layer.weight"
LAYER_KEYS = {
    "attn_norm": "decoder.layers.self_attention.linear_qkv.layer_norm_weight",
    "qkv": "decoder.layers.self_attention.linear_qkv.weight",
    "proj": "decoder.layers.self_attention.linear_proj.weight",
    "mlp_norm": "decoder.layers.mlp.linear_fc1.layer_norm_weight",
    "fc1": "decoder.layers.mlp.linear_fc1.weight",
    "fc2": "decoder.layers.mlp.linear_fc2.weight",
}
# The same tensors under the local spec's module names (model.state_dict(), not the checkpoint).
LOCAL_MODULE_NAMES = {
    "attn_norm": "input_layernorm.weight",
    "qkv": "self_attention.linear_qkv.weight",
    "proj": "self_attention.linear_proj.weight",
    "mlp_norm": "pre_mlp_layernorm.weight",
    "fc1": "mlp.linear_fc1.weight",
    "fc2": "mlp.linear_fc2.weight",
}


@dataclass(frozen=True)
class Shapes:
    """The few architecture numbers the layout conversions need."""
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    head_dim: int
    ffn_hidden_size: int
    vocab_size: int            # real vocabulary (HF side)
    input_mult: float
    logit_mult: float          # output_mult / width_mult (muP) or output_mult

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                             f"num_query_groups {self.num_query_groups}")


def hf_layer_names(i: int) -> dict[str, list[str]]:
    p = f"model.layers.{i}."
    return {
        "attn_norm": [p + "input_layernorm.weight"],
        "qkv": [p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight", p + "self_attn.v_proj.weight"],
        "proj": [p + "self_attn.o_proj.weight"],
        "mlp_norm": [p + "post_attention_layernorm.weight"],
        "fc1": [p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"],
        "fc2": [p + "mlp.down_proj.weight"],
    }


HF_EMBEDDING, HF_FINAL_NORM, HF_LM_HEAD = "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"


def split_qkv(qkv: torch.Tensor, s: Shapes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    per_group = s.num_attention_heads // s.num_query_groups
    grouped = qkv.reshape(s.num_query_groups, per_group + 2, s.head_dim, qkv.shape[-1])
    q = grouped[:, :per_group].reshape(s.num_attention_heads * s.head_dim, -1)
    k = grouped[:, per_group].reshape(s.num_query_groups * s.head_dim, -1)
    v = grouped[:, per_group + 1].reshape(s.num_query_groups * s.head_dim, -1)
    return q.contiguous(), k.contiguous(), v.contiguous()


def merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, s: Shapes) -> torch.Tensor:
    per_group = s.num_attention_heads // s.num_query_groups
    hidden = q.shape[-1]
    grouped = torch.cat([q.reshape(s.num_query_groups, per_group, s.head_dim, hidden),
                         k.reshape(s.num_query_groups, 1, s.head_dim, hidden),
                         v.reshape(s.num_query_groups, 1, s.head_dim, hidden)], dim=1)
    return grouped.reshape(-1, hidden).contiguous()


def layer_to_hf(parts: dict[str, torch.Tensor], i: int, s: Shapes) -> dict[str, torch.Tensor]:
    """One transformer layer: megatron tensors (keys of LAYER_KEYS) -> HF names."""
    names = hf_layer_names(i)
    q, k, v = split_qkv(parts["qkv"], s)
    gate, up = parts["fc1"].chunk(2, dim=0)
    out = {names["attn_norm"][0]: parts["attn_norm"], names["proj"][0]: parts["proj"],
           names["mlp_norm"][0]: parts["mlp_norm"], names["fc2"][0]: parts["fc2"]}
    out.update(zip(names["qkv"], (q, k, v)))
    out.update(zip(names["fc1"], (gate.contiguous(), up.contiguous())))
    return out


def layer_from_hf(hf: dict[str, torch.Tensor], i: int, s: Shapes) -> dict[str, torch.Tensor]:
    """Inverse of :func:`layer_to_hf`: HF tensors of layer i -> megatron parts."""
    names = hf_layer_names(i)
    return {
        "attn_norm": hf[names["attn_norm"][0]],
        "qkv": merge_qkv(*(hf[n] for n in names["qkv"]), s),
        "proj": hf[names["proj"][0]],
        "mlp_norm": hf[names["mlp_norm"][0]],
        "fc1": torch.cat([hf[n] for n in names["fc1"]], dim=0),
        "fc2": hf[names["fc2"][0]],
    }


def _fold(weight: torch.Tensor, mult: float) -> torch.Tensor:
    # In float64 then back, so folding and unfolding round-trip bit-exactly wherever possible.
    return weight if mult == 1.0 else (weight.double() * mult).to(weight.dtype)


def embedding_to_hf(weight: torch.Tensor, s: Shapes) -> torch.Tensor:
    return _fold(weight[: s.vocab_size], s.input_mult).contiguous()


def output_layer_to_hf(weight: torch.Tensor, s: Shapes) -> torch.Tensor:
    return _fold(weight[: s.vocab_size], s.logit_mult).contiguous()


def _pad_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    if weight.shape[0] > rows:
        raise ValueError(f"HF vocabulary {weight.shape[0]} is larger than the padded megatron vocabulary {rows}")
    pad = weight.new_zeros(rows - weight.shape[0], weight.shape[1])
    return torch.cat([weight, pad], dim=0)


def embedding_from_hf(weight: torch.Tensor, s: Shapes, padded_vocab: int) -> torch.Tensor:
    return _pad_rows(_fold(weight, 1.0 / s.input_mult), padded_vocab)


def output_layer_from_hf(weight: torch.Tensor, s: Shapes, padded_vocab: int) -> torch.Tensor:
    return _pad_rows(_fold(weight, 1.0 / s.logit_mult), padded_vocab)
