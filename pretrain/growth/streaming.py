"""Streaming, sharded growth: each rank reads only the old regions its target slices need.

Why: the one-process growth holds the whole model, its fp32 copy and both
Adam moments (16 bytes/parameter: ~1.6 TB at 101B).  Tensors grow
independently, so growth can go one slice at a time.

* **Target slices.** The next stage's layout (``parallel`` TP/PP of the new
  config, DP = world / (TP·PP)) cuts every grown tensor like megatron does:
  per layer, PP stages own contiguous layer ranges, TP shards split the rows
  of column-parallel weights (qkv, fc1 per gate/up half, embedding, output
  layer) and the columns of row-parallel ones (proj, fc2); norm gains are
  whole (TP rank 0).  DP replicas of a (TP, PP) position share its slices
  round-robin.  When the world is no multiple of TP·PP, slices are dealt
  round-robin over all ranks.
* **Reads.** The old blocks a slice copies follow from the growth rules
  (:func:`pretrain.growth.tensors.old_blocks`); they are loaded with
  ``dist_checkpointing.load`` as ShardedTensors whose local shape is the
  block (``axis_fragmentations=None``: any offset), so the torch_dist
  backend reads only the stored chunks that overlap them.
* **Writes.** Slices are grouped per rank into batches of at most
  ``budget_bytes`` (at least one slice).  Step ``i`` (collective: every rank
  takes part, with its batch ``i`` or nothing) loads the batch's old blocks,
  grows the slices (:func:`pretrain.growth.tensors.grown_region`, the code
  the one-process growth runs) and saves them with ``dist_checkpointing`` into
  a part directory.  At the end rank 0 folds every part's DCP metadata into
  the checkpoint's ``.metadata`` and moves the part files beside it: the
  result is one ordinary torch_dist checkpoint.

Peak memory per rank: one batch of grown slices, the old blocks it copies,
and the torch_dist reader's transient copy of each stored old chunk it
touches (the reader loads a stored chunk whole, then narrows it).
"""

from __future__ import annotations

import ctypes
import pickle
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist
from omegaconf import DictConfig

from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex, TensorStorageMetadata

from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing import ShardedTensor

from pretrain.checkpoint import save_synchronously
from pretrain.growth.spec import GrowthSpec
from pretrain.growth.tensors import KeyRule, OldReader, grown_region, old_blocks, rule_for

PARTS = "growth_parts"
DCP_METADATA = ".metadata"
PART_SEP = "@grown@"
DEFAULT_BUDGET_BYTES = 256 << 20
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter

ROW_PARALLEL = ("linear_proj.weight", "linear_fc2.weight")
COLUMN_PARALLEL = ("linear_qkv.weight", "linear_fc1.weight", "embedding.word_embeddings.weight",
                   "output_layer.weight")


def parts_dir(target: Path) -> Path:
    """Where the part checkpoints of ``target`` are written: a hidden sibling, so the target
    directory holds only the final checkpoint (dist_checkpointing warns on saving into a non-empty one)."""
    return target.parent / f".{target.name}.{PARTS}"


@dataclass(frozen=True)
class Slice:
    """One rectangle of one grown tensor: layer (None: not layer-stacked), rows, cols."""

    rule: KeyRule
    layer: int | None
    rows: tuple[int, int]
    cols: tuple[int, int]

    @property
    def nbytes(self) -> int:
        """Size at 4 bytes/element (FP32 checkpoint tensors): what the batch budget counts."""
        return (self.rows[1] - self.rows[0]) * (self.cols[1] - self.cols[0]) * 4

    def global_offset(self) -> tuple[int, ...]:
        per_layer = (self.cols[0],) if self.rule.vector else (self.rows[0], self.cols[0])
        return ((self.layer,) if self.rule.layered else ()) + per_layer

    def local_shape(self) -> tuple[int, ...]:
        cols = self.cols[1] - self.cols[0]
        per_layer = (cols,) if self.rule.vector else (self.rows[1] - self.rows[0], cols)
        return ((1,) if self.rule.layered else ()) + per_layer


def split_range(start: int, stop: int, parts: int) -> list[tuple[int, int]]:
    """``[start, stop)`` in ``parts`` contiguous ranges, sizes differing by at most one."""
    size, extra = divmod(stop - start, parts)
    bounds, at = [], start
    for part in range(parts):
        end = at + size + (part < extra)
        bounds.append((at, end))
        at = end
    return bounds


def _tp_pieces(rule: KeyRule, tp: int, tp_rank: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(rows, cols) rectangles of one layer held by TP rank ``tp_rank`` (megatron's TP partitioning)."""
    rows, cols = (0, rule.new_rows), (0, rule.new_cols)
    if rule.vector:
        return [(rows, cols)] if tp_rank == 0 else []
    if rule.model_key.endswith(ROW_PARALLEL):
        return [(rows, split_range(0, rule.new_cols, tp)[tp_rank])]
    if rule.model_key.endswith("linear_fc1.weight"):  # gate and up halves split alike
        half = rule.new_rows // 2
        return [(split_range(start, start + half, tp)[tp_rank], cols) for start in (0, half)]
    if rule.model_key.endswith(COLUMN_PARALLEL):
        return [(split_range(0, rule.new_rows, tp)[tp_rank], cols)]
    raise ValueError(f"checkpoint tensor {rule.key!r}: no tensor-parallel rule in pretrain/growth/streaming.py")


def _stage_layers(rule: KeyRule, pp: int, stage: int) -> list[int | None]:
    if rule.layered:
        return list(range(*split_range(0, rule.new_layers, pp)[stage]))
    first = rule.model_key.startswith("embedding.")
    return [None] if stage == (0 if first else pp - 1) else []


def rank_slices(rules: list[KeyRule], tp: int, pp: int, world: int) -> list[list[Slice]]:
    """Every rank's target slices, in key order (each rank computes all ranks' lists: no communication)."""
    out: list[list[Slice]] = [[] for _ in range(world)]
    layout_aware = world % (tp * pp) == 0
    dp = world // (tp * pp) if layout_aware else 1
    dealt = 0
    for rule in rules:
        for stage in range(pp):
            for tp_rank in range(tp):
                pieces = [Slice(rule, layer, rows, cols) for layer in _stage_layers(rule, pp, stage)
                          for rows, cols in _tp_pieces(rule, tp, tp_rank)]
                for index, piece in enumerate(pieces):
                    if layout_aware:  # megatron's rank order: tp fastest, then dp, then pp
                        rank = tp_rank + tp * ((index % dp) + dp * stage)
                    else:
                        rank, dealt = dealt % world, dealt + 1
                    out[rank].append(piece)
    return out


def batches(slices: list[Slice], budget_bytes: int) -> list[list[Slice]]:
    """Consecutive slices grouped up to ``budget_bytes`` (a slice larger than the budget goes alone)."""
    groups: list[list[Slice]] = []
    size = 0
    for piece in slices:
        if groups and size + piece.nbytes <= budget_bytes:
            groups[-1].append(piece)
            size += piece.nbytes
        else:
            groups.append([piece])
            size = piece.nbytes
    return groups


def _old_requests(batch: list[Slice], spec: GrowthSpec, dtypes: dict[str, torch.dtype]
                  ) -> dict[str, ShardedTensor]:
    """ShardedTensors of exactly the old blocks ``batch`` copies (deduplicated)."""
    requests: dict[str, ShardedTensor] = {}
    for piece in batch:
        rule = piece.rule
        for old_layer, rows, cols, _, _ in old_blocks(rule, piece.layer, slice(*piece.rows), slice(*piece.cols), spec):
            name = _block_name(rule.key, old_layer, rows, cols)
            if name in requests:
                continue
            local = (1,) if rule.layered else ()
            local += (cols.stop - cols.start,) if rule.vector else (rows.stop - rows.start, cols.stop - cols.start)
            offset = (old_layer,) if rule.layered else ()
            offset += (cols.start,) if rule.vector else (rows.start, cols.start)
            requests[name] = ShardedTensor(
                key=rule.key, data=torch.empty(local, dtype=dtypes[rule.key]), dtype=dtypes[rule.key],
                local_shape=local, global_shape=rule.old_shape, global_offset=offset, axis_fragmentations=None)
    return requests


def _block_name(key: str, layer: int | None, rows: slice, cols: slice) -> str:
    return f"{key}|{layer}|{rows.start}:{rows.stop}|{cols.start}:{cols.stop}"


def _reader(key: str, loaded: dict[str, torch.Tensor]) -> OldReader:
    """Reads the old blocks :func:`_old_requests` loaded."""
    def read(layer: int | None, rows: slice, cols: slice) -> torch.Tensor:
        block = loaded[_block_name(key, layer, rows, cols)]
        return block.reshape(rows.stop - rows.start, cols.stop - cols.start)
    return read


def _grow_batch(batch: list[Slice], loaded: dict[str, torch.Tensor], spec: GrowthSpec, new_model_cfg: DictConfig,
                seed: int, dtypes: dict[str, torch.dtype]) -> dict[str, ShardedTensor]:
    """The grown slices of one batch, keyed for a part checkpoint (a function, so no slice outlives it)."""
    grown: dict[str, ShardedTensor] = {}
    for piece in batch:
        rule = piece.rule
        data = grown_region(rule, piece.layer, slice(*piece.rows), slice(*piece.cols), _reader(rule.key, loaded),
                            spec, new_model_cfg, seed, dtypes[rule.key]).reshape(piece.local_shape())
        name = part_key(rule.key, piece.global_offset(), rule.new_shape)
        grown[name] = ShardedTensor(key=name, data=data, dtype=data.dtype, local_shape=tuple(data.shape),
                                    global_shape=tuple(data.shape), global_offset=(0,) * data.dim(),
                                    axis_fragmentations=None)
    return grown


def return_freed_memory(threshold: int = 1 << 20) -> None:
    """Serve allocations above ``threshold`` bytes by mmap, so a freed slice goes back to the OS.

    glibc raises its mmap threshold after the first large free (up to 32 MiB), so slices of
    a few MiB then come from the heap and freed ones stay resident: peak RSS would grow with
    the number of slices, not with the largest.  Process-wide and permanent: in a staged run
    growth runs in the grown stage's trainer workers (pretrain.train.growth_start), so their
    training keeps the 1 MiB threshold too (the CPU-side allocations above it are mmapped;
    not measured for speed on GPU).  No-op where ``mallopt`` is missing.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, threshold)
    except (OSError, AttributeError):
        pass


def grow_streaming(source: Path, parts_root: Path, spec: GrowthSpec, new_model_cfg: DictConfig, seed: int,
                   tp: int, pp: int, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> Iterator[dict]:
    """Grow every tensor of ``source`` slice by slice into part checkpoints under ``parts_root``.

    Collective over the default process group (dist_checkpointing takes no other: on GPU that is
    the trainer's NCCL group, which serves, since only pickled plans travel through it and the
    tensors stay on the CPU).  Yields one record per step: this rank's slice count, grown bytes
    and bytes of old blocks read (the benchmark's and the trainer's accounting).
    """
    return_freed_memory()
    metadata = dist_checkpointing.load_tensors_metadata(str(source))
    rules = [rule_for(key, tuple(metadata[key].global_shape), spec) for key in sorted(metadata)]
    dtypes = {key: item.dtype for key, item in metadata.items()}
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    plans = [batches(slices, budget_bytes) for slices in rank_slices(rules, tp, pp, world)]
    if rank == 0 and parts_root.exists():  # left by an interrupted growth
        shutil.rmtree(parts_root)
    steps = max(len(plan) for plan in plans)
    mine = plans[rank]
    for step in range(steps):
        batch = mine[step] if step < len(mine) else []
        requests = _old_requests(batch, spec, dtypes)
        read_bytes = sum(block.data.numel() * block.data.element_size() for block in requests.values())
        loaded = dist_checkpointing.load(requests, str(source), validate_access_integrity=False)
        del requests
        grown = _grow_batch(batch, loaded, spec, new_model_cfg, seed, dtypes)
        del loaded
        part = parts_root / f"{step:06d}"
        if rank == 0:
            part.mkdir(parents=True, exist_ok=True)
        if dist.is_initialized():
            dist.barrier()
        save_synchronously(grown, part, validate_access_integrity=False)
        del grown
        yield {"step": step, "slices": len(batch), "bytes": sum(piece.nbytes for piece in batch),
               "read_bytes": read_bytes}


def part_key(key: str, offset: tuple[int, ...], global_shape: tuple[int, ...]) -> str:
    """A slice's own key in a part checkpoint: saved there as a whole tensor (torch DCP refuses a save
    whose chunks do not cover a tensor); :func:`merge_parts` turns it back into a chunk of ``key``."""
    return f"{key}{PART_SEP}{'.'.join(map(str, offset))}{PART_SEP}{'.'.join(map(str, global_shape))}"


def _parse_part_key(name: str) -> tuple[str, tuple[int, ...], tuple[int, ...]]:
    key, offset, shape = name.split(PART_SEP)
    return key, tuple(int(x) for x in offset.split(".")), tuple(int(x) for x in shape.split("."))


def merge_parts(target: Path, parts_root: Path) -> None:
    """Fold every part checkpoint's slices into ``target/.metadata`` as chunks of their keys.

    Rank 0 only, after every rank finished saving (parts and the target's
    common state).  Part files are moved beside the target's own, renamed
    ``p<part>_<name>`` so they cannot clash.
    """
    with open(target / DCP_METADATA, "rb") as handle:
        merged = pickle.load(handle)
    for part in sorted(p for p in parts_root.iterdir() if p.is_dir()):
        with open(part / DCP_METADATA, "rb") as handle:
            metadata = pickle.load(handle)
        offsets = {}
        for name, item in metadata.state_dict_metadata.items():
            if PART_SEP not in name:
                raise ValueError(f"{part}: unexpected entry {name!r} in a growth part checkpoint")
            key, offset, shape = _parse_part_key(name)
            offsets[name] = offset
            entry = merged.state_dict_metadata.setdefault(
                key, TensorStorageMetadata(properties=item.properties, size=torch.Size(shape), chunks=[]))
            entry.chunks.append(ChunkStorageMetadata(offsets=torch.Size(offset), sizes=item.size))
        moved: set[str] = set()
        for index, info in metadata.storage_data.items():
            key = _parse_part_key(index.fqn)[0]
            name = f"p{part.name}_{info.relative_path}"
            merged.storage_data[MetadataIndex(key, offsets[index.fqn])] = replace(info, relative_path=name)
            if name not in moved:  # replaces a stale file of an interrupted growth
                shutil.move(str(part / info.relative_path), str(target / name))
                moved.add(name)
    with open(target / DCP_METADATA, "wb") as handle:
        pickle.dump(merged, handle)
    shutil.rmtree(parts_root)
