"""The Tele-FLM model: layout-independent numerics and megatron's standard names."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from pretrain.model.teleflm import logit_multiplier, padded_vocab_size, resolved_vocab_size, width_mult
from tests.helpers.launch import torchrun


def test_vocab_padding_rounds_up_to_divisor_times_tp():
    assert padded_vocab_size(80000, 128, 4) == 80384  # Tele-FLM's published padded size
    assert padded_vocab_size(8000, 128, 1) == 8064
    assert padded_vocab_size(8000, 128, 2) == 8192
    assert resolved_vocab_size(OmegaConf.create({"vocab_size": 8000, "padded_vocab_size": 8192}), 1) == 8192


def test_mup_output_multiplier_matches_tele_flm():
    cfg = OmegaConf.merge(OmegaConf.load("configs/model/52b.yaml"))
    assert width_mult(cfg) == 16
    assert logit_multiplier(cfg) == pytest.approx(0.03125)
    cfg.mup.enabled = False
    assert logit_multiplier(cfg) == 0.5


@pytest.mark.multiproc
def test_tp2_and_tp1_forward_agree_and_names_are_megatron_standard():
    out = torchrun(2, ["tests/pretrain/model/model_worker.py"], timeout=240, cpu_only="builds its own gloo group and CPU tensors")
    line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
    results = json.loads(line[len("RESULT "):])
    assert results["tp2_sp"] == pytest.approx(results["tp1"], abs=1e-5)
    assert results["tp2"] == pytest.approx(results["tp1"], abs=1e-5)
    names = set(results["names_tp1"])
    expected = {"embedding.word_embeddings.weight", "decoder.final_layernorm.weight", "output_layer.weight"}
    for i in range(4):
        expected |= {f"decoder.layers.{i}.{suffix}" for suffix in (
            "input_layernorm.weight", "self_attention.linear_qkv.weight",
            "self_attention.linear_proj.weight", "pre_mlp_layernorm.weight",
            "mlp.linear_fc1.weight", "mlp.linear_fc2.weight")}
    assert names == expected
