"""Grow a trainer checkpoint: any TP/PP in, a layout-free grown checkpoint out.

Called by a grown stage's first trainer launch on all its ranks
(:mod:`pretrain.train.growth_start`), or offline (tests, benchmarks).

The trainer's checkpoints keep every tensor in model space (global shapes,
layers stacked on a leading axis), optimizer state included when it is
saved ``fully_reshardable`` (``checkpoint.optimizer_sharding``, or converted by
pretrain.tools.reshard_checkpoint) or by the plain optimizer: ``optimizer.state.{param,exp_avg,exp_avg_sq}.<param key>``.  So
growth needs no model: load the tensors whole, grow each one
(:mod:`pretrain.growth.tensors`), and write them back under the same keys
with the same common state (iteration, consumed samples, Adam step in the
param groups).  The next stage loads the result at its own TP/PP through
dist_checkpointing's resharding, like any resumed run.

What changes in the common state: the LR scheduler restarts for the new
stage (re-warm-up to the stage's LR, decay over its ``lr_decay_iters``),
``layout`` is marked "grown" so the RNG state of the old layout is not restored,
and a ``growth`` record is added. The param groups' LRs are left as saved: the
trainer takes every group's LR from the new stage's config on load
(``megatron_step.load_with_configured_lrs``), which under μP follows the new width.

Two paths, bitwise identical results (new entries are a function of the
element's global index, :mod:`pretrain.growth.fresh`):

* one process (no process group, or ``streaming=False``): load every tensor
  whole, grow, write; memory: the whole model + fp32 copy + 2 moments.
* streaming (default under a process group of several ranks): each rank of
  the next stage's layout reads only the old regions its target slices need
  and writes its own slices (:mod:`pretrain.growth.streaming`); memory: about
  one batch of slices (``budget_bytes``) per rank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing import ShardedObject, ShardedTensor
from megatron.core.dist_checkpointing.serialization import load_sharded_metadata, load_tensors_metadata

from pretrain.checkpoint import save_synchronously
from pretrain.growth.spec import GrowthConfigError, GrowthSpec, make_spec
from pretrain.growth.streaming import DEFAULT_BUDGET_BYTES, grow_streaming, merge_parts, parts_dir
from pretrain.growth.tensors import LAYER_STACKED_PREFIX, grow_state, split_key

RUN_CONFIG = "run_config.yaml"
LAYOUT_FREE_SHARDING = ("fully_reshardable", "fully_sharded_model_space", None)


def _check_layout_free(common: dict[str, Any], source: Path) -> None:
    optimizer = common.get("optimizer") or {}
    sharding = optimizer.get("param_state_sharding_type") if isinstance(optimizer, dict) else None
    if sharding not in LAYOUT_FREE_SHARDING:
        raise GrowthConfigError(
            f"{source}: optimizer state saved as {sharding!r}, which is laid out per DP rank; growth needs "
            "model-space optimizer state: convert it with pretrain.tools.reshard_checkpoint (docs/checkpointing.md) "
            "or train the stage with checkpoint.optimizer_sharding=fully_reshardable")


def _stage_scheduler(old: dict[str, Any], train: DictConfig) -> dict[str, Any]:
    """Megatron scheduler state for a stage that starts now: re-warm-up, then its own decay.

    The trainer's scheduler takes these values from the checkpoint
    (``use_checkpoint_opt_param_scheduler``), so they must be the new stage's.
    """
    decay_steps = int(train.lr_decay_iters or train.train_iters)
    style = {"cosine": "cosine", "wsd": "WSD", "constant": "constant"}[str(train.lr_decay_style)]
    return {**old, "max_lr": float(train.lr), "min_lr": float(train.min_lr),
            "lr_warmup_steps": int(train.lr_warmup_iters), "lr_decay_steps": decay_steps,
            "lr_decay_style": style, "num_steps": 0}


def _grown_common(common: dict[str, Any], new_cfg: DictConfig,
                  spec: GrowthSpec) -> dict[str, Any]:
    common = dict(common)
    common["scheduler"] = _stage_scheduler(common.get("scheduler") or {}, new_cfg.train)
    common["layout"] = {"grown_from": common.get("layout")}
    common["growth"] = {"spec": spec.to_dict(), "start_iteration": int(common["iteration"])}
    return common


def load_full_tensors(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a dist checkpoint at its global shape (common state left out)."""
    metadata = load_tensors_metadata(str(checkpoint_dir))
    loaded = dist_checkpointing.load(metadata, str(checkpoint_dir), validate_access_integrity=False)
    return {key: loaded[key] for key in metadata}


def grown_objects(checkpoint_dir: Path, spec: GrowthSpec) -> list[ShardedObject]:
    """The non-tensor per-layer entries (linear layers' ``_extra_state``) for the new layer count.

    New layers take their source layer's object (old layer 0's for fresh
    layers); per-rank RNG states are dropped (the layout changes anyway).
    """
    metadata = {key: item for key, item in load_sharded_metadata(str(checkpoint_dir)).items()
                if isinstance(item, ShardedObject) and not key.startswith("rng_state")}
    loaded = dist_checkpointing.load(dict(metadata), str(checkpoint_dir), validate_access_integrity=False)
    by_base: dict[str, dict[tuple, object]] = {}
    shapes: dict[str, tuple] = {}
    for key, item in metadata.items():
        by_base.setdefault(item.key, {})[tuple(item.global_offset)] = loaded[key]
        shapes[item.key] = tuple(item.global_shape)
    rank = dist.get_rank() if dist.is_initialized() else 0
    objects = []
    for base, values in by_base.items():
        layered = base.startswith("decoder.layers.") and shapes[base][0] == spec.old.num_layers
        if not layered:
            objects += [ShardedObject(base, value, shapes[base], offset, replica_id=rank)
                        for offset, value in values.items()]
            continue
        for index, (_kind, source) in enumerate(spec.layer_sources):
            value = values[(max(source, 0),) + tuple(next(iter(values))[1:])]
            objects.append(ShardedObject(base, value, (spec.new.num_layers,) + shapes[base][1:],
                                         (index,) + tuple(next(iter(values))[1:]), replica_id=rank))
    return objects


def _sharded(tensors: dict[str, torch.Tensor]) -> dict[str, ShardedTensor]:
    """One chunk per layer for layer-stacked keys, as the trainer and the streaming growth write
    them: a whole stacked chunk would make every rank that loads one layer read all of them
    (measured: 7.4x the checkpoint read on resume of an 8-layer one-process growth)."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    sharded = {}
    for key, tensor in tensors.items():
        model_key = split_key(key)[1]
        if not model_key.startswith(LAYER_STACKED_PREFIX):
            sharded[key] = ShardedTensor.from_rank_offsets(key, tensor.contiguous(), replica_id=rank)
            continue
        layers = tensor.shape[0]
        for layer in range(layers):
            sharded[f"{key}|{layer}"] = ShardedTensor.from_rank_offsets(
                key, tensor[layer:layer + 1].contiguous(), (0, layer, layers), replica_id=rank)
    return sharded


def grow_checkpoint(source: str | Path, target: str | Path, new_cfg: DictConfig, ramp_iters: int,
                    depth_position: str = "top", depth_init: str = "copy",
                    seed: int | None = None, streaming: bool | None = None,
                    budget_bytes: int = DEFAULT_BUDGET_BYTES,
                    on_step: Callable[[dict], None] | None = None) -> DictConfig:
    """Write ``target`` (a checkpoint directory) = ``source`` grown to ``new_cfg.model``.

    ``new_cfg`` is the next stage's full trainer config.  Returns it completed
    with the ``growth`` block (spec, start_iteration, ramp_iters) that the
    grown stage must train with; it is also the target's ``run_config.yaml``.

    ``streaming`` (default: a process group of more than one rank is
    initialised) grows slice by slice over the ranks of the new stage's
    ``parallel`` layout, at most ``budget_bytes`` of grown slices per rank and
    step; otherwise this process grows whole tensors (every rank of a group
    computes them, rank 0 writes).  ``on_step`` gets each streaming step's
    record (:func:`pretrain.growth.streaming.grow_streaming`): the trainer
    counts the bytes read and written and tells its hang watchdog that the
    growth is moving.
    """
    source, target = Path(source), Path(target)
    old_cfg = OmegaConf.load(source / RUN_CONFIG)
    common = dist_checkpointing.load_common_state_dict(str(source))
    _check_layout_free(common, source)
    new_cfg = OmegaConf.create(OmegaConf.to_container(new_cfg, resolve=True))
    # The vocabulary is the data's (the trainer fills it from the tokenizer manifest): keep the old one.
    for key in ("vocab_size", "padded_vocab_size"):
        value = OmegaConf.select(old_cfg, f"model.{key}")
        if value is not None:
            new_cfg.model[key] = int(value)
    spec = make_spec(old_cfg.model, new_cfg.model, depth_position, depth_init)
    seed = int(new_cfg.train.seed) if seed is None else int(seed)
    state = _grown_common(common, new_cfg, spec)
    new_cfg.growth = {"spec": spec.to_dict(), "start_iteration": int(common["iteration"]),
                      "ramp_iters": int(ramp_iters), "depth_position": depth_position, "depth_init": depth_init}
    rank = dist.get_rank() if dist.is_initialized() else 0
    if streaming is None:
        streaming = dist.is_initialized() and dist.get_world_size() > 1
    if rank == 0:
        target.mkdir(parents=True, exist_ok=True)
    if dist.is_initialized():
        dist.barrier()
    if streaming:
        parallel = new_cfg.parallel
        for record in grow_streaming(source, parts_dir(target), spec, new_cfg.model, seed,
                                tp=int(parallel.tensor_model_parallel_size),
                                pp=int(parallel.pipeline_model_parallel_size), budget_bytes=budget_bytes):
            if on_step is not None:
                on_step(record)
        tensors: dict[str, ShardedTensor] = {}
    else:
        tensors = _sharded(grow_state(load_full_tensors(source), spec, new_cfg.model, seed))
    objects = grown_objects(source, spec)
    # The tensors' entry vanishes from the common state once its ShardedTensors are extracted: leave
    # it out when streaming (nothing to extract) so both paths write the same common.pt.
    save_synchronously({**state, **({"grown_tensors": tensors} if tensors else {}), "grown_objects": objects},
                       target)
    if dist.is_initialized():
        dist.barrier()
    if rank == 0:
        if streaming:
            merge_parts(target, parts_dir(target))
        OmegaConf.save(new_cfg, target / RUN_CONFIG, resolve=True)
    if dist.is_initialized():
        dist.barrier()
    return new_cfg
