"""The checkpoint accounting's measurements and the layout guard, without a training run.

The multi-process figures (write balance, read-once) are checked on a real TP2 PP2 DP2 run in
tests/pretrain/train/test_trainer_multiproc.py."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from pretrain.checkpoint import CheckpointLayoutError, check_resumable, saved_sharding
from pretrain.checkpoint_accounting import PeakRss, bytes_written_by, count_reads, summarize_load, summarize_save


def test_peak_rss_sees_an_allocation_freed_inside_the_block():
    import time

    with PeakRss() as rss:
        block = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB, touched
        time.sleep(0.05)  # held like a gathered state during a save (sampled every 1 ms)
        del block
    assert rss.extra >= 48 << 20, (rss.extra, rss.method)
    with PeakRss() as idle:
        pass
    assert idle.extra < 16 << 20, (idle.extra, idle.method)


def test_reads_and_writes_are_counted_from_a_real_torch_dcp_checkpoint(tmp_path):
    import torch.distributed.checkpoint as dcp

    state = {"a": torch.arange(1 << 18, dtype=torch.float32), "b": torch.ones(1000)}
    dcp.save(state, storage_writer=dcp.FileSystemWriter(str(tmp_path)), no_dist=True)
    written, files = bytes_written_by(tmp_path, 0)
    assert files >= 2 and written >= 4 * ((1 << 18) + 1000)
    target = {"a": torch.empty(1 << 18), "b": torch.empty(1000)}
    with count_reads() as reads:
        dcp.load(target, storage_reader=dcp.FileSystemReader(str(tmp_path)), no_dist=True)
    assert torch.equal(target["a"], state["a"])
    assert 4 * ((1 << 18) + 1000) <= reads["bytes"] <= written and reads["items"] == 2


def test_summaries():
    save = summarize_save([{"bytes_written": w, "peak_extra_rss": r, "seconds": 1.0}
                           for w, r in [(300, 10), (100, 40), (100, 0), (100, 0)]])
    assert save["write_balance"] == 2.0 and save["ranks_writing"] == 4
    assert save["peak_extra_rss_over_share"] == 0.267  # 40 / (600 / 4)
    load = summarize_load([{"bytes_read": 60, "verify_bytes": 50, "seconds": 2.0}] * 2, 100)
    assert load["read_ratio"] == 1.2 and load["verify_ratio"] == 1.0


def _cfg(tp: int, pp: int, dp: int, vpp=None):
    return OmegaConf.create({"parallel": {"tensor_model_parallel_size": tp, "pipeline_model_parallel_size": pp,
                                          "data_parallel_size": dp, "virtual_pipeline_model_parallel_size": vpp}})


def test_dp_reshardable_resumes_at_another_dp_only():
    common = {"optimizer": {"param_state_sharding_type": "dp_reshardable"},
              "layout": {"tp": 2, "pp": 2, "dp": 2, "vpp": 0}}
    check_resumable(common, _cfg(2, 2, 4))   # DP may change
    with pytest.raises(CheckpointLayoutError, match=r"pp 2 -> 1.*nproc_per_node=8 -m pretrain.tools.reshard"):
        check_resumable(common, _cfg(2, 1, 4))
    with pytest.raises(CheckpointLayoutError, match="checkpoint.optimizer_sharding=dp_reshardable"):
        check_resumable(common, _cfg(2, 2, 2, vpp=2))
    check_resumable({**common, "optimizer": {"param_state_sharding_type": "fully_reshardable"}}, _cfg(1, 4, 1))
    # a chained optimizer nests the field per sub-optimizer
    assert saved_sharding({0: {"param_state_sharding_type": "dp_reshardable"}}) == "dp_reshardable"
    assert saved_sharding({"param_groups": []}) is None


def test_reshard_tool_refuses_writing_into_its_source_and_stray_arguments(tmp_path):
    from pretrain.tools.reshard_checkpoint import source_config

    src = tmp_path / "iter_0000010"
    src.mkdir()
    with pytest.raises(ValueError, match="inside"):
        source_config(src, src / "out", [])
    with pytest.raises(ValueError, match="key=value"):
        source_config(src, tmp_path / "out", [str(tmp_path / "other")])
