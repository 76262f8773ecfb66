"""Streaming, sharded growth across a layout change is bitwise the one-process growth.

Old checkpoints from the shared growth run (TP2 and PP2, 2 processes) grow into
the new stage's TP2 × PP2 layout with 4 gloo processes (``streaming_worker.py``):
every tensor (model and optimizer state), the common state and the per-layer
objects must equal those of the whole-tensor growth.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers.launch import torchrun

CASES = [
    {"name": "all_interleave_copy_mup", "old": "old_tp2_mup", "mup": True, "position": "interleave", "init": "copy",
     "changes": {"hidden_size": 128, "num_attention_heads": 4, "num_query_groups": 4, "ffn_hidden_size": 192,
                 "num_layers": 4}},
    {"name": "all_top_random", "old": "old_pp2_sp", "mup": False, "position": "top", "init": "random",
     "changes": {"hidden_size": 96, "num_attention_heads": 4, "num_query_groups": 4, "ffn_hidden_size": 128,
                 "num_layers": 3}},
]


@pytest.fixture(scope="module")
def compared(growth_run, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("streaming")
    cases = [{**case, "source": str(growth_run / case["old"] / "checkpoints" / "iter_0000003")} for case in CASES]
    (out / "cases.json").write_text(json.dumps(cases))
    torchrun(4, ["tests/pretrain/growth/streaming_worker.py", str(out / "out.json"), str(out / "cases.json")],
             timeout=600, cpu_only="builds its own gloo group and CPU tensors")
    return json.loads((out / "out.json").read_text())


@pytest.mark.parametrize("name", [case["name"] for case in CASES])
def test_streaming_growth_is_bitwise_the_one_process_growth(compared, name):
    r = compared[name]
    assert r["same_keys"] and r["optimizer_keys"] == 27, r  # 9 params x (param, exp_avg, exp_avg_sq)
    assert r["unequal"] == [], r["unequal"]
    assert r["common_equal"] and r["objects_equal"] and r["objects"] > 0
    assert not r["parts_left"]
