"""Parameter, FLOP and MFU arithmetic checked against hand-computed numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pretrain.tools.flops import (
    PEAK_BF16_TFLOPS,
    detect_peak_bf16_tflops,
    mfu,
    model_flops_per_token,
    model_padded_vocab,
    padded_vocab_size,
    parameter_count,
    peak_bf16_tflops_for,
)

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def load_model(name: str):
    """Load a model preset with its `defaults` chain resolved, like Hydra does."""
    cfg = OmegaConf.load(CONFIGS / "model" / f"{name}.yaml")
    defaults = cfg.pop("defaults", [])
    merged = OmegaConf.create()
    for entry in defaults:
        merged = OmegaConf.merge(merged, load_model(entry) if entry != "_self_" else cfg)
    return merged if defaults else cfg


def test_padded_vocab_matches_tele_flm() -> None:
    assert padded_vocab_size(80000, 128, 4) == 80384
    assert padded_vocab_size(80000, 128, 1) == 80000
    assert padded_vocab_size(80001, 128, 1) == 80128


def test_tele_flm_52b_parameter_count() -> None:
    cfg = load_model("52b")
    vocab = model_padded_vocab(cfg, tp=4)
    counts = parameter_count(cfg, vocab)
    assert vocab == 80384
    assert counts["embedding"] == counts["output"] == 80384 * 8192
    # 4 h^2 attention + 3 h f SwiGLU + 2 norm gains per layer.
    assert counts["per_layer"] == 4 * 8192**2 + 3 * 8192 * 21824 + 2 * 8192
    assert counts["total"] == 52_824_121_344
    # Recipe quotes 52.85B; the exact count of the published shape is 52.824B (0.05% off).
    assert counts["total"] / 52.85e9 == pytest.approx(1.0, abs=1e-3)


def test_flops_per_token_tiny_hand_computed() -> None:
    # 2 layers, hidden 8, 2 heads of 4, GQA with 1 group, FFN 16, vocab 10 padded to 16.
    cfg = {"num_layers": 2, "hidden_size": 8, "num_attention_heads": 2, "num_query_groups": 1,
           "kv_channels": 4, "ffn_hidden_size": 16, "vocab_size": 10, "make_vocab_size_divisible_by": 16}
    qkv = 8 * (8 + 2 * 4)        # 128
    out = 8 * 8                  # 64
    mlp = 3 * 8 * 16             # 384
    logits = 8 * 16              # 128 (padded vocab)
    n_matmul = 2 * (qkv + out + mlp) + logits       # 1280
    attention = 6 * 2 * 32 * 8                      # causal: 6 L s d = 3072
    assert parameter_count(cfg, 16)["matmul"] == n_matmul
    assert model_flops_per_token(cfg, seq_length=32) == 6 * 1280 + 3072 == 10752
    # The embedding is a lookup: it is in the total but not in the FLOP count.
    assert parameter_count(cfg, 16)["total"] == n_matmul + 16 * 8 + 2 * 2 * 8 + 8


def test_flops_52b_order_of_magnitude() -> None:
    cfg = load_model("52b")
    flops = model_flops_per_token(cfg, 4096, padded_vocab=80384)
    n = parameter_count(cfg, 80384)
    assert flops == 6 * n["matmul"] + 6 * 64 * 4096 * 8192
    assert 3.2e11 < flops < 3.3e11


def test_mfu_arithmetic() -> None:
    # 1000 tok/s at 1.56e11 FLOP/token on a 312 TFLOP/s GPU is exactly 50%.
    assert mfu(1000.0, 1.56e11, 312.0) == pytest.approx(0.5)
    assert mfu(0.0, 1e12, 989.0) == 0.0
    with pytest.raises(ValueError):
        mfu(1.0, 1.0, 0.0)


def test_peak_table_is_dense_bf16() -> None:
    assert PEAK_BF16_TFLOPS["A800"] == PEAK_BF16_TFLOPS["A100"] == 312.0
    assert PEAK_BF16_TFLOPS["H100"] == PEAK_BF16_TFLOPS["H200"] == 989.0
    assert 1979.0 not in PEAK_BF16_TFLOPS.values()
    assert peak_bf16_tflops_for("NVIDIA A800-SXM4-80GB") == 312.0
    assert peak_bf16_tflops_for("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_bf16_tflops_for("NVIDIA H200") == 989.0
    assert peak_bf16_tflops_for("NVIDIA H100 PCIe") == 756.0
    assert peak_bf16_tflops_for("Tesla V100-SXM2-32GB") is None


def test_detect_peak_is_none_without_cuda() -> None:
    import torch

    expected = None if not torch.cuda.is_available() else peak_bf16_tflops_for(torch.cuda.get_device_name())
    assert detect_peak_bf16_tflops() == expected
