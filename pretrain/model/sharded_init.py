"""Initialise only this rank's shard, with the values the unsharded tensor would have.

Drawing every full tensor on every rank (and keeping a slice) made start-up cost the
whole model per rank: minutes at 52B, repeated on all 896 GPUs at every launch.
Here the full tensor is cut, along its tensor-parallel dimension, into fixed blocks of
``BLOCK`` rows (or columns), each drawn from its own generator seeded by (run seed,
parameter's global name, block index). A rank draws only the blocks its shard touches,
so the cost follows the shard, and any layout (TP1, TP2, TP4, with or without
megatron's partition stride) assembles the same full tensor: losses stay comparable
across layouts, as before.
"""

from __future__ import annotations

import hashlib
from typing import Callable

import torch

BLOCK = 64   # rows (or columns) per generator: shard boundaries are multiples of it in practice

Init = Callable[[torch.Tensor, torch.Generator], None]


def block_seed(seed: int, global_name: str, block: int) -> int:
    digest = hashlib.sha256(f"{seed}:{global_name}:{block}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def shard_ranges(full_size: int, tp_size: int, tp_rank: int, stride: int = 1) -> list[tuple[int, int]]:
    """[start, end) ranges of the full partition dimension this rank holds, in order.

    megatron's rule (``_initialize_affine_weight_cpu``): split into ``stride × TP``
    chunks and take every TP-th one starting at this rank (stride 2 keeps SwiGLU's
    [gate; up] halves paired on each rank)."""
    chunks = stride * tp_size
    if full_size % chunks:
        raise ValueError(f"partition size {full_size} is not divisible by stride {stride} x TP {tp_size}")
    size = full_size // chunks
    return [(i * size, (i + 1) * size) for i in range(tp_rank, chunks, tp_size)]


def init_shard(shard: torch.Tensor, full_shape: list[int], partition_dim: int,
               ranges: list[tuple[int, int]], init: Init, seed: int, global_name: str) -> None:
    """Fill ``shard`` (the concatenation of ``ranges`` of the full tensor along
    ``partition_dim``) block by block; only the blocks the ranges touch are drawn."""
    offset = 0
    for start, end in ranges:
        first_block, last_block = start // BLOCK, (end - 1) // BLOCK
        for block in range(first_block, last_block + 1):
            lo, hi = block * BLOCK, min((block + 1) * BLOCK, full_shape[partition_dim])
            shape = list(full_shape)
            shape[partition_dim] = hi - lo
            values = torch.empty(shape, dtype=torch.float32)
            init(values, torch.Generator(device="cpu").manual_seed(block_seed(seed, global_name, block)))
            take_lo, take_hi = max(lo, start), min(hi, end)
            piece = values.narrow(partition_dim, take_lo - lo, take_hi - take_lo)
            shard.narrow(partition_dim, offset + take_lo - start, take_hi - take_lo).copy_(piece)
        offset += end - start


def init_full(full_shape: list[int], partition_dim: int, init: Init, seed: int, global_name: str) -> torch.Tensor:
    """The whole tensor (TP1): what every layout's shards concatenate to."""
    full = torch.empty(full_shape, dtype=torch.float32)
    init_shard(full, full_shape, partition_dim, [(0, full_shape[partition_dim])], init, seed, global_name)
    return full
