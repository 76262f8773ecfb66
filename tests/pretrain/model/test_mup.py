"""μP rules per parameter kind against width, on the real model configs (no process group)."""

from __future__ import annotations

import math

import pytest
from omegaconf import OmegaConf

from pretrain.model import mup
from pretrain.scaling.widths import model_at_width, with_base

NAMES = {
    "embedding.word_embeddings.weight": "embedding",
    "output_layer.weight": "readout",
    "decoder.final_layernorm.weight": "vector",
    "decoder.layers.3.input_layernorm.weight": "vector",
    "decoder.layers.3.self_attention.linear_qkv.layer_norm_weight": "vector",  # TE fused norm
    "decoder.layers.3.self_attention.linear_qkv.weight": "matrix",
    "decoder.layers.3.self_attention.linear_proj.weight": "block_output",
    "decoder.layers.3.mlp.linear_fc1.weight": "matrix",
    "decoder.layers.3.mlp.linear_fc2.weight": "block_output",
}


def model_cfg(name: str):
    cfg = OmegaConf.load(f"configs/model/{name}.yaml")
    if "defaults" in cfg:
        base = model_cfg("52b")
        cfg.pop("defaults")
        cfg = OmegaConf.merge(base, cfg)
    return cfg


def run_cfg(model, lr=1e-3, lr_matrix=4e-3, min_lr=1e-4):
    return OmegaConf.create({"model": OmegaConf.to_container(model),
                             "train": {"lr": lr, "lr_matrix": lr_matrix, "min_lr": min_lr}})


def test_kinds_from_names_ignore_wrappers_and_layer_index():
    for name, kind in NAMES.items():
        assert mup.param_kind(name) == kind
        assert mup.param_kind("module.module." + name) == kind
    assert mup.rule_signature(model_cfg("52b"), "module.decoder.layers.0.mlp.linear_fc2.weight") == \
        mup.rule_signature(model_cfg("52b"), "decoder.layers.63.mlp.linear_fc2.weight")
    # the model's own classifier agrees with the μP one
    from pretrain.model.teleflm import param_kind as model_param_kind
    for name in NAMES:
        assert model_param_kind(name) == mup.param_kind(name)


def test_52b_init_std_matches_tele_flm_rules():
    target, proxy = model_cfg("52b"), model_cfg("proxy")
    m = 8192 / 512
    for name, kind in NAMES.items():
        std_target, std_proxy = mup.init_std(target, kind, name), mup.init_std(proxy, kind, name)
        if kind == "vector":
            assert std_target is None and std_proxy is None
        elif kind in ("embedding", "readout"):
            assert std_target == std_proxy  # constant across width
        elif "linear_fc2" in name:
            assert std_target == pytest.approx(4.242e-3 / math.sqrt(21824 / 1344))
        else:
            assert std_target == pytest.approx(4.242e-3 / math.sqrt(m))
            assert std_proxy == pytest.approx(4.242e-3)
    assert mup.init_std(target, "embedding") == 4.0e-3


def test_adam_lrs_per_kind_scale_with_inverse_fan_in():
    target = run_cfg(model_cfg("52b"))
    proxy = run_cfg(model_cfg("proxy"))
    for name, kind in NAMES.items():
        t, p = mup.group_lr(target, name), mup.group_lr(proxy, name)
        if kind in ("matrix", "block_output"):
            assert p.max_lr == pytest.approx(4e-3)
            fan = 21824 / 1344 if "fc2" in name else 16.0
            assert t.max_lr == pytest.approx(4e-3 / fan)
            assert t.min_lr == pytest.approx(t.max_lr * 0.1)  # same floor ratio as train.min_lr/train.lr
        else:
            assert t.max_lr == p.max_lr == 1e-3 and t.min_lr == 1e-4


def test_mup_off_means_no_width_scaling():
    cfg = model_cfg("52b")
    cfg.mup.enabled = False
    run = run_cfg(cfg)
    assert mup.init_std(cfg, "matrix", "decoder.layers.0.mlp.linear_fc1.weight") == 4.242e-3
    assert mup.group_lr(run, "decoder.layers.0.mlp.linear_fc1.weight").max_lr == 4e-3
    assert mup.fan_in_mult(cfg, "decoder.layers.0.mlp.linear_fc2.weight") == 1.0


def test_grown_width_gets_rules_of_its_new_width():
    base = model_at_width(model_cfg("tiny"), 4, 32)
    for heads in (4, 8, 16):
        grown = with_base(model_at_width(model_cfg("tiny"), heads, 32), base)
        m = heads / 4
        assert mup.init_std(grown, "matrix", "decoder.layers.0.self_attention.linear_qkv.weight") == \
            pytest.approx(0.02 / math.sqrt(m))
        assert mup.group_lr(run_cfg(grown), "decoder.layers.1.self_attention.linear_proj.weight").max_lr == \
            pytest.approx(4e-3 / m)


def test_transferred_effective_values_at_target_width():
    effective = mup.effective_hyperparameters(run_cfg(model_cfg("52b")))
    assert effective["logits"]["multiplier"] == pytest.approx(0.03125)
    assert effective["qkv"]["max_lr"] == pytest.approx(4e-3 / 16)
    assert effective["norm"]["init_std"] is None and effective["norm"]["max_lr"] == 1e-3


def test_config_errors_name_the_key():
    cfg = model_cfg("52b")
    cfg.mup.base_hidden_size = 0
    with pytest.raises(ValueError, match="model.mup.base_hidden_size"):
        mup.init_std(cfg, "matrix", "decoder.layers.0.mlp.linear_fc1.weight")
    with pytest.raises(ValueError, match="train.lr_matrix"):
        mup.group_lr(run_cfg(model_cfg("52b"), lr_matrix=-1.0), "decoder.layers.0.mlp.linear_fc1.weight")
    with pytest.raises(ValueError, match="train.min_lr"):
        mup.group_lr(run_cfg(model_cfg("52b"), min_lr=1.0), "output_layer.weight")
