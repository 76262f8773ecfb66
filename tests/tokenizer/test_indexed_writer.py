"""The workers' numpy writer produces exactly megatron-core's bytes."""

from __future__ import annotations

import numpy
import pytest
import torch
from megatron.core.datasets.indexed_dataset import DType, IndexedDataset, IndexedDatasetBuilder

from tokenizer.indexed_writer import ShardIndexedWriter, token_dtype


@pytest.mark.parametrize("vocab_size", [8000, 65499, 65500, 80000])
def test_dtype_rule_matches_megatron(vocab_size):
    assert token_dtype(vocab_size) is DType.optimal_dtype(vocab_size)


@pytest.mark.parametrize("dtype", [numpy.uint16, numpy.int32])
def test_bytes_equal_indexed_dataset_builder(tmp_path, dtype):
    rng = numpy.random.default_rng(0)
    docs = [rng.integers(0, 60000, size=n).tolist() + [2] for n in (0, 1, 17, 300, 5)]
    ours = ShardIndexedWriter(tmp_path / "ours.bin", dtype)
    theirs = IndexedDatasetBuilder(str(tmp_path / "theirs.bin"), dtype=dtype)
    for doc in docs:
        ours.add_document(doc)
        theirs.add_item(torch.tensor(doc))
        theirs.end_document()
    ours.finalize(tmp_path / "ours.idx")
    theirs.finalize(str(tmp_path / "theirs.idx"))
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"ours{suffix}").read_bytes() == (tmp_path / f"theirs{suffix}").read_bytes()
    dataset = IndexedDataset(str(tmp_path / "ours"))
    assert len(dataset) == len(docs)
    assert [dataset[i].tolist() for i in range(len(docs))] == docs


def test_empty_dataset_matches_too(tmp_path):
    ShardIndexedWriter(tmp_path / "ours.bin", numpy.uint16).finalize(tmp_path / "ours.idx")
    builder = IndexedDatasetBuilder(str(tmp_path / "theirs.bin"), dtype=numpy.uint16)
    builder.finalize(str(tmp_path / "theirs.idx"))
    assert (tmp_path / "ours.idx").read_bytes() == (tmp_path / "theirs.idx").read_bytes()
