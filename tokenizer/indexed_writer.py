"""A numpy-only writer for Megatron indexed datasets (.bin/.idx), byte-identical to megatron-core's.

Ray workers use it for per-shard outputs because importing megatron.core costs each
worker several seconds (it pulls in torch and the whole training stack) for a job that
only appends integers to a file.  The merged per-source files are still written by
megatron-core's own IndexedDatasetBuilder, and tests/tokenizer/test_indexed_writer.py
checks that this writer's bytes equal IndexedDatasetBuilder's for the same documents.
Format (megatron.core.datasets.indexed_dataset._IndexWriter): header, version 1, dtype
code, sequence count, document count, int32 lengths, int64 byte pointers, int64 document
indices; one sequence per document here.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy

INDEX_HEADER = b"MMIDIDX\x00\x00"
DTYPE_CODES = {numpy.uint16: 8, numpy.int32: 4}


def token_dtype(vocab_size: int) -> type:
    """megatron-core's DType.optimal_dtype rule: uint16 below 65500 ids, else int32."""
    return numpy.uint16 if vocab_size < 65500 else numpy.int32


class ShardIndexedWriter:
    """Append whole documents (token id lists) to path.bin; write path.idx on finalize."""

    def __init__(self, bin_path: str | Path, dtype: type) -> None:
        if dtype not in DTYPE_CODES:
            raise ValueError(f"unsupported token dtype {dtype}")
        self.dtype = dtype
        self.data_file = open(bin_path, "wb")
        self.lengths: list[int] = []

    def add_document(self, ids) -> None:
        array = numpy.asarray(ids, dtype=self.dtype)
        self.data_file.write(array.tobytes(order="C"))
        self.lengths.append(int(array.size))

    def finalize(self, idx_path: str | Path) -> None:
        self.data_file.close()
        lengths = numpy.asarray(self.lengths, dtype=numpy.int64)
        itemsize = numpy.dtype(self.dtype).itemsize
        pointers = numpy.zeros(len(lengths), dtype=numpy.int64)
        if len(lengths) > 1:
            numpy.cumsum(lengths[:-1] * itemsize, out=pointers[1:])
        document_indices = numpy.arange(len(lengths) + 1, dtype=numpy.int64)
        with open(idx_path, "wb") as index:
            index.write(INDEX_HEADER)
            index.write(struct.pack("<Q", 1))
            index.write(struct.pack("<B", DTYPE_CODES[self.dtype]))
            index.write(struct.pack("<Q", len(lengths)))
            index.write(struct.pack("<Q", len(document_indices)))
            index.write(lengths.astype(numpy.int32).tobytes(order="C"))
            index.write(pointers.tobytes(order="C"))
            index.write(document_indices.tobytes(order="C"))
