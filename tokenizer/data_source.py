"""Reading the data stage's output (DATA_DIR) without ever holding the corpus in memory."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

REQUIRED_COLUMNS = ("id", "text", "lang", "source")
# Source and language names become file names under indexed/; keep them filesystem-safe.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class DataDirError(ValueError):
    """DATA_DIR does not follow the data stage's contract; the message names the file."""


def list_shards(data_dir: str | Path, split: str) -> list[Path]:
    """Sorted parquet shards of one split ("shards" or "heldout").

    Sorting by name fixes the document order, which makes the encoded output deterministic.
    """
    folder = Path(data_dir) / split
    if not folder.is_dir():
        raise DataDirError(f"input: missing folder {folder} (expected {split}/part-*.parquet)")
    shards = sorted(folder.glob("part-*.parquet"))
    if not shards:
        raise DataDirError(f"input: no part-*.parquet files in {folder}")
    for shard in shards:
        columns = set(pq.read_schema(shard).names)
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise DataDirError(f"input: {shard} lacks column(s) {missing}; has {sorted(columns)}")
    return shards


def read_mixture(data_dir: str | Path) -> dict[str, dict]:
    """The per-source weights of the training mix: {source: {"weight", "documents", "bytes"}}."""
    path = Path(data_dir) / "mixture.json"
    if not path.is_file():
        raise DataDirError(f"input: missing {path}")
    try:
        sources = json.loads(path.read_text())["sources"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise DataDirError(f"input: {path} is not {{\"sources\": {{name: {{...}}}}}}: {error}") from error
    if not isinstance(sources, dict) or not sources:
        raise DataDirError(f"input: {path} has no sources")
    for name, entry in sources.items():
        check_name(name, f"{path} source")
        for key in ("weight", "bytes"):
            if not isinstance(entry, dict) or not isinstance(entry.get(key), (int, float)) or entry[key] < 0:
                raise DataDirError(f"input: {path} source {name!r} needs a non-negative number '{key}'")
    if sum(float(e["weight"]) for e in sources.values()) <= 0:
        raise DataDirError(f"input: {path} weights sum to zero")
    return sources


def check_name(name: str, where: str) -> str:
    if not isinstance(name, str) or not SAFE_NAME.match(name):
        raise DataDirError(f"{where} {name!r} is not a safe file name ([A-Za-z0-9_.-])")
    return name


def iter_batches(shard: Path, columns: tuple[str, ...], batch_size: int) -> Iterator[dict[str, list]]:
    """Column batches of one shard, streamed: memory is bounded by batch_size rows."""
    parquet = pq.ParquetFile(shard)
    for batch in parquet.iter_batches(batch_size=batch_size, columns=list(columns)):
        data = batch.to_pydict()
        texts = data.get("text")
        if texts is not None and any(t is None for t in texts):
            raise DataDirError(f"input: {shard} has a null 'text'")
        yield data
