"""Streaming growth under a per-process memory limit smaller than the model's whole state.

    python bench/growth/streaming_memory.py [--out runs/growth_streaming_bench] [--ranks 4]

1. ``build``: a synthetic trainer-format checkpoint of the old model (random
   FP32 parameters, fp32 master copy and both Adam moments in model space,
   as ``checkpoint.optimizer_sharding=fully_reshardable`` writes them; stored
   per layer and TP2 shard like a TP2 run's checkpoint).
2. ``grow`` under torchrun (``--ranks`` processes, new layout TP2 × PP2):
   after imports and process-group start each process records its RSS
   (baseline), resets its peak RSS (``/proc/self/clear_refs``), limits its
   address space (``RLIMIT_AS``) to the current size + ``--allowance-mb``,
   runs the streaming growth (one slice per step) and records its peak RSS.
3. ``reference``: the one-process growth (one gloo rank, whole tensors, no limit);
   ``reference_limited``: the same under the streaming ranks' limit (it should fail).
4. Compare both grown checkpoints key by key (bitwise), assert
   ``peak RSS - baseline <= 2 x largest slice`` for every process, and
   write ``results.json``.

The "largest slice" is the larger of the largest target slice a process
writes and the largest stored chunk of the old checkpoint (the torch_dist
reader loads a stored chunk whole before narrowing it to the requested region).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

OLD = dict(num_layers=4, hidden_size=768, num_attention_heads=6, num_query_groups=6, kv_channels=128,
           ffn_hidden_size=2048)
NEW = dict(num_layers=6, hidden_size=1152, num_attention_heads=9, num_query_groups=9, kv_channels=128,
           ffn_hidden_size=3072)
VOCAB = 32768
NEW_TP, NEW_PP = 2, 2
OLD_TP = 2
ITERATION = 10


def model_cfg(shape: dict) -> dict:
    return dict(name="streaming_bench", **shape, vocab_size=VOCAB, padded_vocab_size=VOCAB,
                make_vocab_size_divisible_by=128, seq_length=128, rotary_base=10000, norm_epsilon=1e-5,
                init_method_std=0.02, embedding_init_std=0.02, truncated_normal_init=True, input_mult=1.0,
                output_mult=1.0, mup=dict(enabled=False, base_hidden_size=shape["hidden_size"]))


def run_config(shape: dict, run_dir: Path, tp: int, pp: int):
    from omegaconf import OmegaConf

    return OmegaConf.create(dict(
        run_dir=str(run_dir), model=model_cfg(shape),
        parallel=dict(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, data_parallel_size=1),
        train=dict(seed=1234, lr=2e-3, min_lr=2e-4, lr_warmup_iters=5, lr_decay_iters=100, train_iters=100,
                   lr_decay_style="cosine")))


def init_single_process_group() -> None:
    """A one-rank gloo group (dist_checkpointing needs one), with the CPU shims on."""
    import torch.distributed as dist

    from pretrain.cpu_shims import activate_cpu_shims
    from pretrain.train.setup import free_port

    activate_cpu_shims()

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)


def old_chunks(key: str, shape: tuple[int, ...]):
    """(offset, size) chunks of a TP2 run's checkpoint: per layer, TP split like megatron's."""
    from pretrain.growth.streaming import ROW_PARALLEL, split_range
    from pretrain.growth.tensors import split_key

    layered = split_key(key)[1].startswith("decoder.layers.")
    layers = range(shape[0]) if layered else [None]
    per_layer = shape[1:] if layered else shape
    for layer in layers:
        lead_off, lead_size = ((layer,), (1,)) if layered else ((), ())
        if len(per_layer) == 1:
            yield lead_off + (0,), lead_size + per_layer
            continue
        axis = 1 if key.endswith(ROW_PARALLEL) else 0
        halves = 2 if key.endswith("linear_fc1.weight") else 1
        size = per_layer[axis] // halves
        for half in range(halves):
            for lo, hi in split_range(half * size, (half + 1) * size, OLD_TP):
                off, sz = [0, 0], list(per_layer)
                off[axis], sz[axis] = lo, hi - lo
                yield lead_off + tuple(off), lead_size + tuple(sz)


def old_shapes() -> dict[str, tuple[int, ...]]:
    """Global shapes of the old model's tensors (layers stacked), as the trainer's checkpoint has them."""
    layers, hidden, ffn = OLD["num_layers"], OLD["hidden_size"], OLD["ffn_hidden_size"]
    heads_per_group = OLD["num_attention_heads"] // OLD["num_query_groups"]
    qkv_rows = OLD["num_query_groups"] * (heads_per_group + 2) * OLD["kv_channels"]
    proj_cols = OLD["num_attention_heads"] * OLD["kv_channels"]
    layer = "decoder.layers."
    return {"embedding.word_embeddings.weight": (VOCAB, hidden), "output_layer.weight": (VOCAB, hidden),
            "decoder.final_layernorm.weight": (hidden,),
            layer + "self_attention.linear_qkv.weight": (layers, qkv_rows, hidden),
            layer + "self_attention.linear_qkv.layer_norm_weight": (layers, hidden),
            layer + "self_attention.linear_proj.weight": (layers, hidden, proj_cols),
            layer + "mlp.linear_fc1.weight": (layers, 2 * ffn, hidden),
            layer + "mlp.linear_fc1.layer_norm_weight": (layers, hidden),
            layer + "mlp.linear_fc2.weight": (layers, hidden, ffn)}


def build(out: Path) -> dict:
    """Write the old checkpoint; returns its figures."""
    import torch
    from omegaconf import OmegaConf
    from megatron.core.dist_checkpointing import ShardedTensor

    from pretrain.checkpoint import save_synchronously

    init_single_process_group()
    cfg = run_config(OLD, out / "old", OLD_TP, 1)
    generator = torch.Generator().manual_seed(0)
    state, total, largest_chunk = {}, 0, 0
    for name, shape in old_shapes().items():
        for kind in ("model", "param", "exp_avg", "exp_avg_sq"):
            key = name if kind == "model" else f"optimizer.state.{kind}.{name}"
            full = torch.randn(shape, generator=generator) * 0.02
            if kind == "exp_avg_sq":
                full = full.abs() * 1e-3
            total += full.numel() * 4
            for offset, size in old_chunks(key, shape):
                data = full[tuple(slice(o, o + s) for o, s in zip(offset, size))].contiguous()
                largest_chunk = max(largest_chunk, data.numel() * 4)
                state[f"{key}@{offset}"] = ShardedTensor(key=key, data=data, dtype=data.dtype, local_shape=size,
                                                         global_shape=shape, global_offset=offset,
                                                         axis_fragmentations=None)
    common = {"iteration": ITERATION, "consumed_samples": 160, "tokens": 160 * 128, "trainer_state": {},
              "scheduler": {"num_steps": ITERATION}, "layout": {"tp": OLD_TP, "pp": 1, "dp": 1},
              "optimizer": {"param_state_sharding_type": "fully_reshardable", "param_groups": []}}
    source = out / "old" / "iter_0000010"
    source.mkdir(parents=True, exist_ok=True)
    save_synchronously({**common, "tensors": state}, source)
    OmegaConf.save(cfg, source / "run_config.yaml")
    return {"source": str(source), "whole_model_bytes": total, "largest_stored_chunk_bytes": largest_chunk}


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def limit_address_space(allowance_mb: int) -> tuple[int, int, int]:
    """RLIMIT_AS := this process's current size + allowance; resets the peak RSS to the current RSS.

    Returns (baseline RSS kB, address space kB at the limit, limit in bytes)."""
    baseline_kb, vm_kb = status_kb("VmRSS"), status_kb("VmSize")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    limit = (vm_kb << 10) + (allowance_mb << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return baseline_kb, vm_kb, limit


def grow(source: Path, target: Path, out_json: Path, allowance_mb: int) -> None:
    """One torchrun rank: streaming growth under RLIMIT_AS = current size + allowance."""
    import torch.distributed as dist
    from omegaconf import OmegaConf

    from pretrain.cpu_shims import activate_cpu_shims
    from pretrain.growth import grow as grow_module
    from pretrain.growth.spec import make_spec
    from pretrain.growth.streaming import rank_slices
    from pretrain.growth.tensors import rule_for
    from megatron.core import dist_checkpointing

    activate_cpu_shims()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    new_cfg = run_config(NEW, target.parent, NEW_TP, NEW_PP)
    old_cfg = OmegaConf.load(source / "run_config.yaml")
    spec = make_spec(old_cfg.model, new_cfg.model, "interleave", "copy")
    metadata = dist_checkpointing.load_tensors_metadata(str(source))
    rules = [rule_for(key, tuple(metadata[key].global_shape), spec) for key in sorted(metadata)]
    mine = rank_slices(rules, NEW_TP, NEW_PP, world)[rank]
    largest_slice = max(piece.nbytes for piece in mine)
    grown_bytes = sum(piece.nbytes for piece in mine)
    del metadata, rules, mine
    dist.barrier()
    baseline_kb, vm_kb, limit = limit_address_space(allowance_mb)
    start = time.time()
    grow_module.grow_checkpoint(source, target, new_cfg, ramp_iters=10, depth_position="interleave",
                                depth_init="copy", streaming=True, budget_bytes=0)
    seconds = time.time() - start
    record = {"rank": rank, "baseline_rss_mb": baseline_kb / 1024, "peak_rss_mb": status_kb("VmHWM") / 1024,
              "address_space_limit_mb": limit / 2 ** 20, "vm_size_at_limit_mb": vm_kb / 1024,
              "largest_target_slice_mb": largest_slice / 2 ** 20, "rank_grown_bytes_mb": grown_bytes / 2 ** 20,
              "children_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
              "seconds": seconds}
    records = [None] * world
    dist.all_gather_object(records, record)
    if rank == 0:
        out_json.write_text(json.dumps(records, indent=1))
    dist.barrier()
    dist.destroy_process_group()


def reference(source: Path, target: Path) -> float:
    from pretrain.growth.grow import grow_checkpoint

    init_single_process_group()
    start = time.time()
    grow_checkpoint(source, target, run_config(NEW, target.parent, NEW_TP, NEW_PP), ramp_iters=10,
                    depth_position="interleave", depth_init="copy", streaming=False)
    return time.time() - start


def reference_limited(source: Path, target: Path, allowance_mb: int) -> dict:
    """The one-process growth under the streaming ranks' limit: expected to run out of memory."""
    from pretrain.growth.grow import grow_checkpoint

    init_single_process_group()
    limit_address_space(allowance_mb)
    try:
        grow_checkpoint(source, target, run_config(NEW, target.parent, NEW_TP, NEW_PP), ramp_iters=10,
                        depth_position="interleave", depth_init="copy", streaming=False)
    except (MemoryError, RuntimeError) as error:  # torch reports a failed allocation as RuntimeError
        return {"completed": False, "error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
    return {"completed": True}


def compare(a: Path, b: Path) -> dict:
    """Key by key (one full tensor of each at a time): bitwise equal? Plus the common state."""
    import torch
    from megatron.core import dist_checkpointing

    init_single_process_group()
    meta_a = dist_checkpointing.load_tensors_metadata(str(a))
    meta_b = dist_checkpointing.load_tensors_metadata(str(b))
    unequal = []
    for key in sorted(meta_a):
        x = dist_checkpointing.load({key: meta_a[key]}, str(a), validate_access_integrity=False)[key]
        y = dist_checkpointing.load({key: meta_b[key]}, str(b), validate_access_integrity=False)[key]
        if x.dtype != y.dtype or not torch.equal(x, y):
            unequal.append(key)
    common_a = dist_checkpointing.load_common_state_dict(str(a))
    common_b = dist_checkpointing.load_common_state_dict(str(b))
    return {"keys": len(meta_a), "same_keys": sorted(meta_a) == sorted(meta_b), "unequal": unequal,
            "common_equal": repr(common_a) == repr(common_b),
            "grown_bytes": sum(math.prod(m.global_shape) for m in meta_a.values()) * 4}


def sub(args: list[str], ranks: int = 0, env: dict | None = None) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "MALLOC_ARENA_MAX": "2", **(env or {})}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable] + (["-m", "torch.distributed.run", f"--nproc_per_node={ranks}",
                               "--master_addr=127.0.0.1", "--master_port=29731"] if ranks else []) + \
        [__file__] + args
    subprocess.run(cmd, check=True, env=env, cwd=REPO)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "growth_streaming_bench")
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--allowance-mb", type=int, default=192)
    parser.add_argument("--step", choices=["all", "build", "grow", "reference", "reference_limited", "compare"],
                        default="all")
    args = parser.parse_args()
    out = args.out.resolve()
    source = out / "old" / "iter_0000010"
    streamed, whole = out / "streaming" / "iter_0000010", out / "whole" / "iter_0000010"
    if args.step == "build":
        (out / "build.json").write_text(json.dumps(build(out)))
    elif args.step == "grow":
        grow(source, streamed, out / "grow.json", args.allowance_mb)
    elif args.step == "reference":
        (out / "reference.json").write_text(json.dumps({"seconds": reference(source, whole)}))
    elif args.step == "reference_limited":
        (out / "reference_limited.json").write_text(json.dumps(
            reference_limited(source, out / "whole_limited" / "iter_0000010", args.allowance_mb)))
    elif args.step == "compare":
        (out / "compare.json").write_text(json.dumps(compare(streamed, whole)))
    else:
        out.mkdir(parents=True, exist_ok=True)
        common = ["--out", str(out), "--allowance-mb", str(args.allowance_mb)]
        sub(["--step", "build"] + common)
        sub(["--step", "grow"] + common, ranks=args.ranks)
        sub(["--step", "reference"] + common)
        sub(["--step", "reference_limited"] + common)
        sub(["--step", "compare"] + common)
        report(out)


def report(out: Path) -> None:
    built = json.loads((out / "build.json").read_text())
    ranks = json.loads((out / "grow.json").read_text())
    compared = json.loads((out / "compare.json").read_text())
    reference_s = json.loads((out / "reference.json").read_text())["seconds"]
    limited = json.loads((out / "reference_limited.json").read_text())
    rows = []
    for r in ranks:
        largest = max(r["largest_target_slice_mb"], built["largest_stored_chunk_bytes"] / 2 ** 20)
        extra = r["peak_rss_mb"] - r["baseline_rss_mb"]
        rows.append({**r, "largest_slice_mb": largest, "peak_extra_rss_mb": extra, "extra_over_slice": extra / largest})
    result = {"date": time.strftime("%Y-%m-%d"), "old": OLD, "new": NEW, "vocab": VOCAB,
              "layout": f"old TP{OLD_TP} PP1 -> new TP{NEW_TP} PP{NEW_PP}", **built,
              "grown_whole_model_bytes": compared["grown_bytes"], "ranks": rows, "compare": compared,
              "reference_seconds": reference_s, "one_process_under_the_limit": limited}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    assert compared["same_keys"] and not compared["unequal"] and compared["common_equal"], compared
    for row in rows:
        assert row["peak_extra_rss_mb"] <= 2 * row["largest_slice_mb"], row
        assert row["address_space_limit_mb"] < built["whole_model_bytes"] / 2 ** 20, row  # the limit binds


if __name__ == "__main__":
    main()
