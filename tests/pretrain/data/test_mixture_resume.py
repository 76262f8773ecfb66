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
    return dataset.source_ids[dataset.locate(index)[0]]


def read(dataset, start: int, end: int) -> list[tuple[int, bytes]]:
    return [(source_of(dataset, i), np.asarray(dataset[i]["tokens"]).tobytes()) for i in range(start, end)]


def resumed(data_dir: Path, cache: Path, weights: dict, before, consumed: int):
    """The stream a resumed run reads from: built from the new config, given what the
    checkpoint keeps of the old stream (its per-source cursors, where there are any)."""
    after = build_datasets(config(data_dir, weights), read_manifest(data_dir), cache).train
    after.load_state_dict(before.state_dict(consumed))   # the DataMixture callback's resume
    after.set_weights(consumed, weights)                  # its on_start: the config's weights from here
    return after


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


def test_each_source_reads_its_own_order_from_its_cursor(data_dir, tmp_path):
    """No skip either: what each source gave across the change is exactly its first samples
    (k = 0, 1, 2, ...), and within one epoch of the source."""
    manifest = read_manifest(data_dir)
    before = build_datasets(config(data_dir, {"web": 0.7, "code": 0.3}), manifest, tmp_path).train
    after = resumed(data_dir, tmp_path, {"web": 0.2, "code": 0.8}, before, N)
    ids = [before.locate(i) for i in range(N)] + [after.locate(i) for i in range(N, 2 * N)]
    for name in before.names:
        read = [k for source, k in ids if source == name]
        assert read == list(range(len(read))), name
        assert len(read) <= before.sources[before.source_ids[name]].epoch_size
    assert after.cursors(2 * N) == [sum(1 for s, _ in ids if s == n) for n in after.names]
    shares = {n: sum(1 for s, _ in ids[N:] if s == n) / N for n in after.names}
    assert shares == {"code": 0.8, "web": 0.2}   # the greedy blend hits the weights exactly


def test_resumed_stream_reads_what_the_uninterrupted_one_reads(data_dir, tmp_path):
    """A scheduled change at N, uninterrupted, vs. a checkpoint at N/2 resumed: same samples."""
    manifest = read_manifest(data_dir)
    old, new = {"web": 0.7, "code": 0.3}, {"web": 0.2, "code": 0.8}
    straight = build_datasets(config(data_dir, old), manifest, tmp_path).train
    straight.set_weights(N, new)
    first = build_datasets(config(data_dir, old), manifest, tmp_path).train
    resumed_at = N // 2
    again = resumed(data_dir, tmp_path, old, first, resumed_at)
    again.set_weights(N, new)
    assert [straight.locate(i) for i in range(2 * N)] == \
        [first.locate(i) for i in range(resumed_at)] + [again.locate(i) for i in range(resumed_at, 2 * N)]
    for i in (0, N - 1, N, 2 * N - 1):
        assert np.array_equal(straight[i]["tokens"], (first if i < resumed_at else again)[i]["tokens"])


def test_epochs_wrap_in_a_new_order(data_dir, tmp_path):
    stream = build_datasets(config(data_dir, {"web": 1.0, "code": 0.0}), read_manifest(data_dir), tmp_path).train
    web = stream.sources[stream.source_ids["web"]]
    n = web.epoch_size
    second = [web.index(k) for k in range(n, 2 * n)]
    assert sorted(second) == list(range(n)) and second != list(range(n))
    assert stream.locate(n + 3) == ("web", n + 3)


def test_a_new_sequence_length_starts_every_source_afresh(data_dir, tmp_path):
    """A long-context stage from a short-context checkpoint: the old cursors count other samples."""
    manifest = read_manifest(data_dir)
    short = build_datasets(config(data_dir, {"web": 0.7, "code": 0.3}), manifest, tmp_path).train
    cfg = config(data_dir, {"web": 0.7, "code": 0.3})
    cfg.model.seq_length = 2 * SEQ
    long = build_datasets(cfg, manifest, tmp_path).train
    long.load_state_dict(short.state_dict(N))
    assert long.cursors(N) == [0, 0] and long.locate(N)[1] == 0
    assert len(long[N]["tokens"]) == 2 * SEQ
