"""Write a Hugging Face sharded safetensors checkpoint tensor by tensor.

``save_pretrained`` needs the whole model in memory; this writer holds at most
one shard (``max_shard_bytes``) and writes the standard
``model-0000i-of-0000n.safetensors`` files plus ``model.safetensors.index.json``,
which is what ``from_pretrained`` reads. Shards are first written under
temporary names because the total count is only known at the end.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

INDEX_NAME = "model.safetensors.index.json"


class ShardedSafetensorsWriter:
    def __init__(self, out_dir: Path, max_shard_bytes: int) -> None:
        self.out_dir, self.max_shard_bytes = out_dir, max_shard_bytes
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._written: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        self._pending[name] = tensor.contiguous()
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        path = self.out_dir / f"shard-{len(self._written):05d}.tmp.safetensors"
        save_file(self._pending, str(path), metadata={"format": "pt"})
        self._written.append((path, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> list[Path]:
        if self._pending:
            self._flush()
        count, weight_map, final = len(self._written), {}, []
        for i, (tmp, names) in enumerate(self._written):
            path = self.out_dir / f"model-{i + 1:05d}-of-{count:05d}.safetensors"
            tmp.replace(path)
            final.append(path)
            weight_map.update({name: path.name for name in names})
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        return final
