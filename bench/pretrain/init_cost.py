"""Start-up initialisation cost per rank: the old way (draw the full tensor, keep a slice)
against per-shard drawing (pretrain.model.sharded_init), side by side in one run.

    python bench/pretrain/init_cost.py [--hidden 2048] [--ffn 5456]

One Tele-FLM layer's TP-sharded weights (QKV, output projection, SwiGLU FC1 with stride 2,
FC2) at a reduced width; per TP size the seconds one rank spends, and the projection to
the 52B run (52.85B parameters, TP4 PP2: each rank holds 1/8 of them) from the measured
draw rate.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from pretrain.model.sharded_init import init_shard, shard_ranges


def trunc_normal(tensor: torch.Tensor, generator: torch.Generator) -> None:
    torch.nn.init.trunc_normal_(tensor, 0.0, 0.004, -0.008, 0.008, generator=generator)


def layer_weights(hidden: int, ffn: int) -> list[tuple[str, list[int], int, int]]:
    """(name, full shape, partition dim, stride) as megatron tags them."""
    return [("linear_qkv", [3 * hidden, hidden], 0, 1), ("linear_proj", [hidden, hidden], 1, 1),
            ("linear_fc1", [2 * ffn, hidden], 0, 2), ("linear_fc2", [hidden, ffn], 1, 1)]


def old_way(full_shape: list[int], dim: int, stride: int, tp: int, rank: int, seed: int) -> torch.Tensor:
    full = torch.empty(full_shape)
    trunc_normal(full, torch.Generator().manual_seed(seed))
    chunks = torch.chunk(full, stride * tp, dim=dim)
    return torch.cat(chunks[rank::tp], dim=dim)


def per_shard(full_shape: list[int], dim: int, stride: int, tp: int, rank: int, seed: int, name: str) -> torch.Tensor:
    local = list(full_shape)
    local[dim] //= tp
    shard = torch.empty(local)
    init_shard(shard, full_shape, dim, shard_ranges(full_shape[dim], tp, rank, stride), trunc_normal, seed, name)
    return shard


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--ffn", type=int, default=5456)
    args = parser.parse_args()
    torch.set_num_threads(1)
    weights = layer_weights(args.hidden, args.ffn)
    elements = sum(s[0] * s[1] for _, s, _, _ in weights)
    rows = []
    for tp in (1, 2, 4, 8):
        timings = {}
        for label, fn in (("full_then_slice", lambda n, s, d, st: old_way(s, d, st, tp, tp - 1, 0)),
                          ("per_shard", lambda n, s, d, st: per_shard(s, d, st, tp, tp - 1, 0, n))):
            started = time.perf_counter()
            for name, shape, dim, stride in weights:
                fn(name, shape, dim, stride)
            timings[label] = time.perf_counter() - started
        rows.append({"tp": tp, **{k: round(v, 3) for k, v in timings.items()},
                     "speedup": round(timings["full_then_slice"] / timings["per_shard"], 2)})
    rate = elements / rows[0]["per_shard"]  # elements per second on one core, TP1
    params_52b, tp, pp = 52.85e9, 4, 2
    projection = {"draw_rate_elements_per_s": round(rate), "old_s_per_rank": round(params_52b / pp / rate),
                  "per_shard_s_per_rank": round(params_52b / (tp * pp) / rate)}
    print(json.dumps({"layer_elements": elements, "rows": rows, "projection_52b_tp4_pp2": projection}, indent=2))


if __name__ == "__main__":
    main()
