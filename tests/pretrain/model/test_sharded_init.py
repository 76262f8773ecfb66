"""Per-shard initialisation: every layout assembles the same full tensor, and a rank draws
only its share (counted in elements, not timed: the timing lives in bench/pretrain/init_cost.py)."""

from __future__ import annotations

import pytest
import torch

from pretrain.model.sharded_init import BLOCK, init_full, init_shard, shard_ranges


def normal(tensor: torch.Tensor, generator: torch.Generator) -> None:
    torch.nn.init.trunc_normal_(tensor, 0.0, 0.02, -0.04, 0.04, generator=generator)


def megatron_shard(full: torch.Tensor, dim: int, stride: int, tp: int, rank: int) -> torch.Tensor:
    """megatron's _initialize_affine_weight_cpu rule, written independently."""
    chunks = torch.chunk(full, stride * tp, dim=dim)
    return torch.cat(chunks[rank::tp], dim=dim)


SHAPES = [((512, 96), 0, 1), ((96, 384), 1, 1), ((768, 64), 0, 2), ((1000, 8), 0, 1)]
LAYOUTS = [(shape, dim, stride, tp) for shape, dim, stride in SHAPES for tp in (1, 2, 4, 8)
           if shape[dim] % (stride * tp) == 0]   # the layouts megatron can build for each shape


@pytest.mark.parametrize("shape,dim,stride,tp", LAYOUTS)
def test_every_layout_draws_the_same_full_tensor(shape, dim, stride, tp):
    full = init_full(list(shape), dim, normal, seed=7, global_name="decoder.layers.3.mlp.linear_fc1.weight")
    for rank in range(tp):
        local = list(shape)
        local[dim] //= tp
        shard = torch.empty(local)
        init_shard(shard, list(shape), dim, shard_ranges(shape[dim], tp, rank, stride), normal, 7,
                   "decoder.layers.3.mlp.linear_fc1.weight")
        assert torch.equal(shard, megatron_shard(full, dim, stride, tp, rank))


def test_values_depend_on_seed_and_name_only():
    a = init_full([256, 32], 0, normal, 1, "w")
    assert torch.equal(a, init_full([256, 32], 0, normal, 1, "w"))
    assert not torch.equal(a, init_full([256, 32], 0, normal, 2, "w"))
    assert not torch.equal(a, init_full([256, 32], 0, normal, 1, "v"))
    assert a.std().item() == pytest.approx(0.02 * 0.88, rel=0.1)   # ±2σ truncated normal


def test_a_rank_draws_only_its_share():
    drawn = []

    def counting(tensor: torch.Tensor, generator: torch.Generator) -> None:
        drawn.append(tensor.numel())
        normal(tensor, generator)

    shape = [8 * 4 * BLOCK, 128]     # TP8, shards aligned to the blocks
    for tp in (1, 2, 8):
        drawn.clear()
        shard = torch.empty(shape[0] // tp, shape[1])
        init_shard(shard, shape, 0, shard_ranges(shape[0], tp, tp - 1, 1), counting, 0, "w")
        assert sum(drawn) == shape[0] * shape[1] // tp


def test_a_layout_that_does_not_divide_is_named():
    with pytest.raises(ValueError, match="not divisible by stride 2 x TP 4"):
        shard_ranges(100, 4, 0, 2)
