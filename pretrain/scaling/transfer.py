"""Carry the hyperparameters chosen on a width-only proxy to the target model by μP.

Why the written values are the proxy's: under μP the config holds the
*base-width* values and ``pretrain.model.mup`` rescales them at run time from
``model.mup.base_*``; so transfer = copy the seven hyperparameters and set the
target's base shapes to the proxy's.  The effective per-weight values at the
target width (init std ÷ sqrt(width_mult), matrix LR ÷ width_mult, logits ×
output_mult / width_mult) are written next to them for review, as comments
and in JSON, never as keys the run would read twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pretrain.model import mup

# The seven Tele-FLM hyperparameters -> the config key that holds each (base-width values).
SEVEN_HYPERPARAMETERS: dict[str, str] = {
    "lr_vector": "train.lr",
    "lr_matrix": "train.lr_matrix",
    "min_lr": "train.min_lr",
    "init_std_matrix": "model.init_method_std",
    "init_std_vector": "model.embedding_init_std",
    "input_mult": "model.input_mult",
    "output_mult": "model.output_mult",
}


def hyperparameters_of(run_cfg: DictConfig) -> dict[str, float]:
    """The seven values a run used (``train.lr_matrix`` null means it equalled ``train.lr``)."""
    values: dict[str, float] = {}
    for name, key in SEVEN_HYPERPARAMETERS.items():
        value = OmegaConf.select(run_cfg, key)
        if value is None and name == "lr_matrix":
            value = OmegaConf.select(run_cfg, "train.lr")
        if value is None and name == "init_std_vector":
            value = OmegaConf.select(run_cfg, "model.init_method_std")
        if value is None and name in ("input_mult", "output_mult"):
            value = 1.0
        if value is None:
            raise KeyError(f"run config has no {key} (hyperparameter {name})")
        values[name] = float(value)
    return values


def proxy_base_shapes(proxy_model_cfg: DictConfig) -> dict[str, int]:
    """The base shapes a target inherits: the proxy's own base when it has μP on, else its shape."""
    base = mup.base_shapes(proxy_model_cfg) if mup.mup_enabled(proxy_model_cfg) else mup.BaseShapes(
        int(proxy_model_cfg.hidden_size), int(proxy_model_cfg.ffn_hidden_size),
        int(proxy_model_cfg.num_attention_heads))
    return {"base_hidden_size": base.hidden_size, "base_ffn_hidden_size": base.ffn_hidden_size,
            "base_num_attention_heads": base.num_attention_heads}


def transferred_config(hyperparameters: dict[str, float], proxy_model_cfg: DictConfig,
                       target_cfg: DictConfig) -> DictConfig:
    """The target run config with the chosen values and the proxy's base shapes (μP on)."""
    cfg = OmegaConf.create(OmegaConf.to_container(target_cfg, resolve=True))
    for name, key in SEVEN_HYPERPARAMETERS.items():
        OmegaConf.update(cfg, key, hyperparameters[name], force_add=True)
    OmegaConf.update(cfg, "model.mup", {"enabled": True, **proxy_base_shapes(proxy_model_cfg)},
                     merge=True, force_add=True)
    return cfg


def overlay(cfg: DictConfig) -> dict[str, Any]:
    """Just the keys transfer sets, as a Hydra ``@package _global_`` experiment overlay."""
    out: dict[str, Any] = {"model": {}, "train": {}}
    for key in SEVEN_HYPERPARAMETERS.values():
        section, leaf = key.split(".")
        out[section][leaf] = OmegaConf.select(cfg, key)
    out["model"]["mup"] = OmegaConf.to_container(cfg.model.mup)
    return out


def write_transferred_yaml(cfg: DictConfig, path: Path, source: str) -> dict[str, Any]:
    """Write the overlay with the effective target-width values as comments; return them."""
    effective = mup.effective_hyperparameters(cfg)
    lines = ["# @package _global_",
             f"# Transferred by pretrain.scaling.select from {source}",
             f"# to model '{cfg.model.get('name', '?')}' (hidden {cfg.model.hidden_size}, "
             f"width_mult {mup.width_mult_hidden(cfg.model):g}).",
             "# Values below are base-width (proxy) values; pretrain.model.mup rescales them at run time.",
             "# Effective at the target width:"]
    for label, row in effective.items():
        lines.append("#   " + label + ": " + ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    body = OmegaConf.to_yaml(OmegaConf.create(overlay(cfg)))
    path.write_text("\n".join(lines) + "\n" + body)
    return effective
