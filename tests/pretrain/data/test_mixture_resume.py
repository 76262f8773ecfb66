"""A change of mixture weights on resume must neither repeat nor skip a source's samples.

Reads the training stream of ``pretrain.data.build_datasets`` for ``N`` samples under one
set of ``data.weights``, then "resumes" at ``N`` with other weights (what a resumed run
does: build the datasets again from the new config, continue at ``consumed_samples``) and
reads on. A sample's identity is its token content within its source. Within one epoch of
a source no sample may come twice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pretrain.config.schema import typed
from pretrain.data import build_datasets, read_manifest
from tests.helpers.synthetic_data import make_indexed_dataset

SEQ = 64
N = 400  # samples read before the weight change, and after it


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """The synthetic two-source data, and a 1-process gloo group (megatron's builder needs one)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        store = dist.FileStore(str(tmp_path_factory.mktemp("store") / "store"), 1)
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    return make_indexed_dataset(tmp_path_factory.mktemp("data"))


def config(data_dir: Path, weights: dict[str, float]):
    return typed({"data": {"path": str(data_dir), "weights": weights},
                  "model": {"name": "t", "num_layers": 1, "hidden_size": 8, "num_attention_heads": 1,
                            "ffn_hidden_size": 8, "vocab_size": 512, "seq_length": SEQ,
                            "init_method_std": 0.02},
                  "train": {"train_iters": 2 * N // 8, "global_batch_size": 8, "eval_interval": 0}},
                 strict=False)


def source_of(dataset, index: int) -> int:
    """Which source (index in sorted source order) global sample ``index`` comes from."""
    if hasattr(dataset, "locate"):
        return dataset.source_ids[dataset.locate(index)[0]]
    return int(dataset.dataset_index[index])  # megatron's BlendedDataset


def read(dataset, start: int, end: int) -> list[tuple[int, bytes]]:
    return [(source_of(dataset, i), np.asarray(dataset[i]["tokens"]).tobytes()) for i in range(start, end)]


def resumed(data_dir: Path, cache: Path, weights: dict, before, consumed: int):
    """The stream a resumed run reads from: built from the new config, given what the
    checkpoint keeps of the old stream (its per-source cursors, where there are any)."""
    after = build_datasets(config(data_dir, weights), read_manifest(data_dir), cache).train
    if hasattr(after, "load_state_dict"):
        after.load_state_dict(before.state_dict(consumed))
    return after


@pytest.mark.xfail(strict=True, reason="issue 20: megatron's blended index is rebuilt for the new weights and "
                   "indexed with the old consumed_samples (measured: 51 of 360 'web' samples read twice)")
def test_weight_change_on_resume_neither_repeats_nor_skips(data_dir, tmp_path):
    manifest = read_manifest(data_dir)
    before = build_datasets(config(data_dir, {"web": 0.7, "code": 0.3}), manifest, tmp_path).train
    first = read(before, 0, N)
    after = resumed(data_dir, tmp_path, {"web": 0.2, "code": 0.8}, before, N)
    second = read(after, N, 2 * N)
    by_source: dict[int, list[bytes]] = {}
    for source, tokens in first + second:
        by_source.setdefault(source, []).append(tokens)
    for source, samples in by_source.items():
        repeated = len(samples) - len(set(samples))
        assert repeated == 0, f"source {source}: {repeated} of {len(samples)} samples read twice"
