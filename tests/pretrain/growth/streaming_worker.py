"""Streaming growth across a layout change vs the one-process growth (torchrun, 4 gloo processes).

Grows an old trainer checkpoint (written by ``growth_worker.py``'s run) twice
into the new stage's layout TP2 × PP2: streaming (each of the 4 ranks reads
the old regions its slices need and writes them, in several steps) and whole
tensors (``streaming=False``: ``grow_state`` on full tensors, the
one-process code; rank 0 writes).  Then every rank loads both results whole
and rank 0 records, per tensor key, whether they are bitwise equal, plus the
common state and the per-layer objects.

Usage: torchrun --nproc_per_node=4 tests/pretrain/growth/streaming_worker.py OUT_JSON CASE_JSON
CASE_JSON: [{"name", "source", "changes", "mup", "position", "init"}, ...]
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from tests.pretrain.growth import growth_worker  # noqa: E402

NEW_TP, NEW_PP = 2, 2
BUDGET_BYTES = 1 << 20  # per rank and step: several steps (part checkpoints) per growth


def new_config(case: dict, run_dir: Path):
    cfg = growth_worker.config(case["changes"], "tp2", run_dir, case["mup"], lr=growth_worker.NEW_STAGE_LR)
    cfg.parallel.tensor_model_parallel_size, cfg.parallel.pipeline_model_parallel_size = NEW_TP, NEW_PP
    cfg.parallel.data_parallel_size = dist.get_world_size() // (NEW_TP * NEW_PP)
    return cfg


def objects(directory: Path) -> dict[str, bytes]:
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedObject
    from megatron.core.dist_checkpointing.serialization import load_sharded_metadata

    metadata = {key: item for key, item in load_sharded_metadata(str(directory)).items()
                if isinstance(item, ShardedObject)}
    loaded = dist_checkpointing.load(dict(metadata), str(directory), validate_access_integrity=False)
    return {key: pickle.dumps(loaded[key]) for key in sorted(metadata)}


def same(a, b) -> bool:
    """Recursive equality; tensors bitwise."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    return a == b


def compare(case: dict, out_dir: Path) -> dict:
    from megatron.core import dist_checkpointing

    from pretrain.growth.grow import grow_checkpoint, load_full_tensors

    grown = {}
    for mode in ("streaming", "whole"):
        cfg = new_config(case, out_dir / case["name"] / mode)
        target = out_dir / case["name"] / mode / "iter_0000003"
        grow_checkpoint(case["source"], target, cfg, ramp_iters=growth_worker.RAMP_ITERS,
                        depth_position=case["position"], depth_init=case["init"],
                        streaming=mode == "streaming", budget_bytes=BUDGET_BYTES)
        grown[mode] = target
    a, b = (load_full_tensors(grown[m]) for m in ("streaming", "whole"))
    common = [dist_checkpointing.load_common_state_dict(str(grown[m])) for m in ("streaming", "whole")]
    objs = [objects(grown[m]) for m in ("streaming", "whole")]
    return {"keys": sorted(a), "same_keys": sorted(a) == sorted(b),
            "unequal": [k for k in sorted(a) if k not in b or a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])],
            "optimizer_keys": sum(k.startswith("optimizer.state.") for k in a),
            "bytes": sum(t.numel() * t.element_size() for t in a.values()),
            "common_equal": same(common[0], common[1]),
            "objects_equal": objs[0] == objs[1], "objects": len(objs[0]),
            "parts_left": any(p.name.endswith("growth_parts") for p in grown["streaming"].parent.iterdir())}


def main() -> None:
    from pretrain.cpu_shims import activate_cpu_shims

    activate_cpu_shims()
    out_json, cases = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
    dist.init_process_group("gloo")
    results = {case["name"]: compare(case, out_json.parent) for case in cases}
    if dist.get_rank() == 0:
        out_json.write_text(json.dumps(results, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
