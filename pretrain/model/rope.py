"""RoPE scaling for a long-context stage: position interpolation and YaRN, on megatron-core's
rotary embeddings, with the Hugging Face ``rope_parameters`` that compute the same thing.

* ``linear``: megatron's ``RotaryEmbedding(seq_len_interpolation_factor=factor)`` divides
  positions by ``factor``; HF's ``rope_type: linear`` divides the inverse frequencies by it.
* ``yarn``: megatron's ``YarnRotaryEmbedding`` (``position_embedding_type='yarn'``) blends
  interpolated and original frequencies between the ``beta_fast`` / ``beta_slow`` rotation
  counts like HF's ``rope_type: yarn``. YaRN also multiplies cos and sin by
  ``mscale = 0.1 ln(factor) + 1`` (HF's ``attention_factor``); megatron's attention does it in
  ``apply_rotary_pos_emb`` when the TransformerConfig carries ``yarn_rotary_scaling_factor``,
  which the plain config lacks as a field, hence :func:`configure_yarn`.
* A base change (``model.rotary_base``) needs nothing here: HF's ``rope_theta``.
"""

from __future__ import annotations

import math
from typing import Any

ROPE_SCALING_TYPES = ("none", "linear", "yarn")


def yarn_mscale(factor: float) -> float:
    """YaRN's attention temperature (megatron ``_yarn_get_mscale``, HF ``get_mscale``)."""
    return 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0


def original_context(model_cfg: Any) -> int:
    rs = model_cfg.rope_scaling
    return int(rs.original_max_position_embeddings or round(model_cfg.seq_length / rs.factor))


def gpt_model_kwargs(model_cfg: Any) -> dict[str, Any]:
    """The ``GPTModel`` arguments for ``model.rope_scaling``."""
    rs = model_cfg.rope_scaling
    if rs.type == "linear":
        return {"position_embedding_type": "rope", "seq_len_interpolation_factor": float(rs.factor)}
    if rs.type == "yarn":
        return {"position_embedding_type": "yarn"}
    return {"position_embedding_type": "rope"}


def configure_yarn(config: Any, model_cfg: Any) -> None:
    """The ``yarn_*`` attributes GPTModel and the attention read off the TransformerConfig
    (MLA's config has them as fields; the plain one does not)."""
    rs = model_cfg.rope_scaling
    if rs.type != "yarn":
        return
    config.yarn_rotary_scaling_factor = float(rs.factor)
    config.yarn_original_max_position_embeddings = original_context(model_cfg)
    config.yarn_beta_fast, config.yarn_beta_slow = float(rs.beta_fast), float(rs.beta_slow)
    config.yarn_mscale, config.yarn_mscale_all_dim = 1.0, 0.0
    config.yarn_correction_range_round_to_int = True   # HF's truncate=True


def hf_rope_parameters(model_cfg: Any) -> dict[str, Any]:
    """What the exported ``config.json`` needs for transformers to compute the same rotations."""
    theta = float(model_cfg.get("rotary_base") or 10000)
    rs = model_cfg.get("rope_scaling") or {}
    kind = rs.get("type", "none") if rs else "none"
    if kind == "linear":
        return {"rope_type": "linear", "rope_theta": theta, "factor": float(rs["factor"])}
    if kind == "yarn":
        factor = float(rs["factor"])
        original = int(rs.get("original_max_position_embeddings") or round(model_cfg.seq_length / factor))
        return {"rope_type": "yarn", "rope_theta": theta, "factor": factor,
                "original_max_position_embeddings": original, "beta_fast": float(rs.get("beta_fast", 32.0)),
                "beta_slow": float(rs.get("beta_slow", 1.0)), "attention_factor": yarn_mscale(factor),
                "truncate": True}
    return {"rope_type": "default", "rope_theta": theta}
