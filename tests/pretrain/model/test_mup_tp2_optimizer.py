"""At TP2 the sharded model gets the μP rules of its global shapes: init std of the gathered
weights and megatron optimizer group LRs (through config_overrides / scale_lr_cond)."""

from __future__ import annotations

import json
import math

import pytest

from tests.helpers.launch import torchrun


@pytest.mark.multiproc
def test_tp2_shards_follow_global_mup_rules():
    out = torchrun(2, ["tests/pretrain/model/mup_tp2_worker.py"], timeout=300, cpu_only="builds its own gloo group and CPU tensors")
    line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
    params = json.loads(line[len("RESULT "):])
    m = 2.0  # width 256 over base 128 (and 8/4 heads, 688/172 ffn... fc2 fan-in 688/172 = 4)
    qkv = params["decoder.layers.0.self_attention.linear_qkv.weight"]
    fc2 = params["decoder.layers.1.mlp.linear_fc2.weight"]
    proj = params["decoder.layers.1.self_attention.linear_proj.weight"]
    assert qkv["local_shape"] == [3 * 256 // 2, 256]          # a column-parallel shard ...
    assert fc2["local_shape"] == [256, 688 // 2]              # ... and a row-parallel one
    assert qkv["max_lr"] == pytest.approx(8e-3 / m)           # LR from global widths, not shards
    assert proj["max_lr"] == pytest.approx(8e-3 / m)
    assert fc2["max_lr"] == pytest.approx(8e-3 / 4)
    assert fc2["lr_at_end"] == pytest.approx(8e-3 / 4 * 0.1)  # floor keeps train.min_lr/train.lr
    for name in ("embedding.word_embeddings.weight", "output_layer.weight", "decoder.final_layernorm.weight"):
        assert params[name]["max_lr"] == pytest.approx(1e-3)
        assert params[name]["lr_at_end"] == pytest.approx(1e-4)
    assert qkv["full_std"] == pytest.approx(0.02 / math.sqrt(m), rel=0.03)
    assert fc2["full_std"] == pytest.approx(0.02 / math.sqrt(4), rel=0.03)
    assert params["embedding.word_embeddings.weight"]["full_std"] == pytest.approx(0.01, rel=0.03)
    assert params["output_layer.weight"]["full_std"] == pytest.approx(0.02, rel=0.03)
