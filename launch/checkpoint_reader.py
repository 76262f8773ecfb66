"""Read a megatron dist checkpoint one tensor (or one layer) at a time, at any saved TP/PP.

Why not rebuild the model and load everything: a 52B checkpoint does not fit
in the memory of the machine that converts it. A megatron ``torch_dist``
checkpoint is a torch distributed-checkpoint (DCP) directory whose metadata
describes every tensor by its *global* shape and the chunks each rank saved,
whatever TP/PP layout wrote it. Per-layer tensors are stacked on a leading
layer axis and saved one layer per chunk. So we ask DCP for one block of one
tensor at a time (a small load planner below) and never hold more.

Memory bound (honest): DCP reads each saved chunk that overlaps the request in
full, then copies the overlap. Chunks are one layer x one TP shard, so the
peak is about one layer of one weight plus what the caller keeps (the exporter
keeps one layer and one output shard). Reading does not need the model, the
trainer, or megatron's parallel state; it does need a process group (gloo, world 1).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint import load as dcp_load
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadPlan, ReadItem
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

RUN_CONFIG = "run_config.yaml"
LATEST = "latest"


def ensure_single_process_group() -> None:
    """Converters are one process; DCP and dist_checkpointing still want a (gloo, world 1) group."""
    if dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    dist.init_process_group("gloo", rank=0, world_size=1)


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """RUN, RUN/checkpoints (follows ``latest``) or RUN/checkpoints/iter_XXXXXXX."""
    path = Path(path)
    if (path / "metadata.json").exists():
        return path
    if (path / LATEST).is_file():
        target = path / (path / LATEST).read_text().strip()
        if (target / "metadata.json").exists():
            return target
        raise FileNotFoundError(f"checkpoint: {path / LATEST} names {target.name}, which is not a complete checkpoint")
    if (path / "checkpoints" / LATEST).is_file():
        return resolve_checkpoint_dir(path / "checkpoints")
    raise FileNotFoundError(f"checkpoint: {path} is neither a dist checkpoint (no metadata.json) "
                            f"nor a checkpoints directory with a '{LATEST}' file")


class _BlockLoadPlanner(DefaultLoadPlanner):
    """Load the block [offsets, offsets + buffer.shape) of one global tensor into ``buffer``."""

    def __init__(self, key: str, offsets: tuple[int, ...]) -> None:
        super().__init__()
        self.key, self.offsets = key, offsets

    def create_local_plan(self) -> LoadPlan:
        buffer = self.state_dict[self.key]
        chunk = ChunkStorageMetadata(offsets=torch.Size(self.offsets), sizes=buffer.size())
        return LoadPlan(create_read_items_for_chunk_list(self.key, self.metadata.state_dict_metadata[self.key], [chunk]))

    def lookup_tensor(self, index) -> torch.Tensor:  # the buffer itself, not a shard found by offset
        return self.state_dict[index.fqn]

    def resolve_tensor(self, read_item: ReadItem) -> torch.Tensor:
        tensor = self.lookup_tensor(read_item.dest_index)
        for dim, (start, length) in enumerate(zip(read_item.dest_offsets, read_item.lengths)):
            tensor = tensor.narrow(dim, start, length)
        return tensor


class DistCheckpointReader:
    """Global tensors of one checkpoint directory, loaded on demand."""

    def __init__(self, checkpoint_dir: str | Path) -> None:
        ensure_single_process_group()
        self.directory = resolve_checkpoint_dir(checkpoint_dir)
        metadata = FileSystemReader(str(self.directory)).read_metadata()
        self.tensors: dict[str, TensorStorageMetadata] = {
            k: v for k, v in metadata.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}

    def run_config(self) -> DictConfig:
        path = self.directory / RUN_CONFIG
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: the exporter rebuilds the architecture from it")
        return OmegaConf.load(path)

    def has(self, key: str) -> bool:
        return key in self.tensors

    def global_shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._spec(key).size)

    def dtype(self, key: str) -> torch.dtype:
        return self._spec(key).properties.dtype

    def _spec(self, key: str) -> TensorStorageMetadata:
        if key not in self.tensors:
            raise KeyError(f"{key} is not in checkpoint {self.directory} (has: {', '.join(sorted(self.tensors))})")
        return self.tensors[key]

    def block(self, key: str, offsets: tuple[int, ...], shape: tuple[int, ...]) -> torch.Tensor:
        buffer = torch.empty(shape, dtype=self.dtype(key))
        dcp_load({key: buffer}, storage_reader=FileSystemReader(str(self.directory)),
                 planner=_BlockLoadPlanner(key, offsets), no_dist=True)
        return buffer

    def tensor(self, key: str) -> torch.Tensor:
        """A whole tensor (embedding, final norm, output layer)."""
        shape = self.global_shape(key)
        return self.block(key, (0,) * len(shape), shape)

    def layer(self, key: str, index: int) -> torch.Tensor:
        """Layer ``index`` of a tensor stacked on a leading layer axis."""
        shape = self.global_shape(key)
        if not 0 <= index < shape[0]:
            raise IndexError(f"{key}: layer {index} out of range (checkpoint has {shape[0]})")
        return self.block(key, (index,) + (0,) * (len(shape) - 1), (1, *shape[1:]))[0]
