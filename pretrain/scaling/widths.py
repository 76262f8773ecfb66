"""Width-only proxy shapes: Tele-FLM grows width by adding heads of a fixed head dim.

Why a function: the coordinate check, the sweep proxies and the loss-prediction
ladder all need "this model, but N heads wide" with the FFN scaled by the same
ratio and the μP base shapes left untouched (so width_mult follows the width).
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf


def ffn_for_width(model_cfg: DictConfig, hidden_size: int, multiple: int = 8) -> int:
    """FFN size keeping the config's ffn/hidden ratio, rounded to ``multiple``."""
    ratio = int(model_cfg.ffn_hidden_size) / int(model_cfg.hidden_size)
    return max(multiple, int(round(hidden_size * ratio / multiple)) * multiple)


def model_at_width(model_cfg: DictConfig, num_heads: int, head_dim: int | None = None) -> DictConfig:
    """A copy of ``model_cfg`` with ``num_heads`` heads of ``head_dim`` (default: its kv_channels)."""
    if num_heads <= 0:
        raise ValueError(f"num_heads must be positive, got {num_heads}")
    head_dim = int(head_dim or OmegaConf.select(model_cfg, "kv_channels")
                   or int(model_cfg.hidden_size) // int(model_cfg.num_attention_heads))
    hidden = num_heads * head_dim
    cfg = OmegaConf.create(OmegaConf.to_container(model_cfg, resolve=True))
    cfg.hidden_size = hidden
    cfg.num_attention_heads = num_heads
    cfg.num_query_groups = num_heads
    cfg.kv_channels = head_dim
    cfg.ffn_hidden_size = ffn_for_width(model_cfg, hidden)
    cfg.name = f"{model_cfg.get('name', 'model')}_w{hidden}"
    return cfg


def with_base(model_cfg: DictConfig, base_cfg: DictConfig, enabled: bool = True) -> DictConfig:
    """``model_cfg`` with μP on/off and its base shapes taken from ``base_cfg``."""
    cfg = OmegaConf.create(OmegaConf.to_container(model_cfg, resolve=True))
    cfg.mup = {"enabled": enabled,
               "base_hidden_size": int(base_cfg.hidden_size),
               "base_ffn_hidden_size": int(base_cfg.ffn_hidden_size),
               "base_num_attention_heads": int(base_cfg.num_attention_heads),
               "depth_scaled_block_output": bool(OmegaConf.select(model_cfg, "mup.depth_scaled_block_output")
                                                 or False)}
    return cfg
