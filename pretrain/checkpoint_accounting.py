"""Per-rank I/O and memory accounting of checkpoint saves and loads.

Why: at 52B on 896 GPUs the question "who writes how much, who reads how much, how much
host memory does a save take" decides whether checkpointing scales; this module answers
it from measurements on every rank, not from a model of megatron's internals.

Methods (what each number is, exactly):

* ``bytes_written``: sizes of the torch_dist data files this rank's writer produced
  (``__{global_rank}_*.distcp``), plus, on rank 0, the files only rank 0 writes
  (``common.pt``, ``metadata.json``, ``.metadata``). Read off the filesystem after every
  rank finished writing, so it is what landed on storage.
* ``bytes_read``: during a load, the lengths of the storage items torch DCP's
  ``FileSystemReader.read_data`` reads for this rank (a read item reads its whole stored
  chunk, even if only a slice is kept), plus ``common.pt`` and ``.metadata``, which every
  rank reads. The integrity check before a load (every file hashed once, shared among the
  ranks) is reported apart as ``verify_bytes``.
* ``peak_extra_rss``: the highest RSS a sampling thread saw during the save (psutil, every
  1 ms) minus the RSS before it. Sampling, not the kernel's ``VmHWM`` high-water mark: that
  mark can only be reset for the whole process (``/proc/self/clear_refs``), which would
  also reset the run's lifetime peak that ``mem_gb`` in metrics.jsonl reports on CPU. An
  allocation held for less than the interval can be missed; the ones that matter here (a
  gathered optimizer state, a staged copy) live for the whole save. For an async save it
  covers this process (building the state, staging it for the writer), not the forked
  writer process.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psutil

RANK0_FILES = ("common.pt", "metadata.json", ".metadata")


class PeakRss:
    """Context manager: ``extra`` = peak sampled RSS inside the block minus RSS at entry (bytes)."""

    def __init__(self, interval_s: float = 0.001) -> None:
        self.interval_s = interval_s
        self.before = self.peak = self.extra = 0
        self.method = f"psutil RSS sampled every {interval_s * 1000:g} ms"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakRss":
        process = psutil.Process()
        self.before = self.peak = process.memory_info().rss

        def sample() -> None:
            while not self._stop.wait(self.interval_s):
                self.peak = max(self.peak, process.memory_info().rss)

        self._thread = threading.Thread(target=sample, name="checkpoint-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, psutil.Process().memory_info().rss)
        self.extra = self.peak - self.before


def bytes_written_by(directory: str | Path, rank: int) -> tuple[int, int]:
    """(bytes, files) of a finished torch_dist checkpoint that ``rank`` wrote."""
    directory = Path(directory)
    files = list(directory.glob(f"__{rank}_*.distcp"))
    if rank == 0:
        files += [directory / name for name in RANK0_FILES if (directory / name).is_file()]
    return sum(f.stat().st_size for f in files), len(files)


@contextmanager
def count_reads() -> Iterator[dict[str, int]]:
    """Count the bytes torch DCP's FileSystemReader reads in this process (see module doc)."""
    from torch.distributed.checkpoint.filesystem import FileSystemReader

    counter = {"bytes": 0, "items": 0}
    original = FileSystemReader.read_data

    def read_data(self, plan, planner):
        for item in plan.items:
            counter["bytes"] += int(self.storage_data[item.storage_index].length)
            counter["items"] += 1
        return original(self, plan, planner)

    FileSystemReader.read_data = read_data
    try:
        yield counter
    finally:
        FileSystemReader.read_data = original


def summarize_save(per_rank: list[dict]) -> dict:
    """Figures of one save over all ranks (the ``checkpoint`` metrics row carries these).

    ``write_balance``: largest per-rank write / mean write (every rank holds state);
    ``peak_extra_rss_over_share``: largest extra RSS / (checkpoint bytes / world)."""
    written = [r["bytes_written"] for r in per_rank]
    total = sum(written)
    share = total / len(per_rank) if per_rank else 0
    peak = max((r["peak_extra_rss"] for r in per_rank), default=0)
    return {"bytes_total": total, "bytes_written_max": max(written, default=0),
            "write_balance": round(max(written) / (total / len(written)), 3) if total else None,
            "ranks_writing": sum(1 for w in written if w > 0), "world": len(per_rank),
            "peak_extra_rss_max": peak,
            "peak_extra_rss_over_share": round(peak / share, 3) if share else None,
            "save_seconds_max": round(max((r["seconds"] for r in per_rank), default=0), 3)}


def summarize_load(per_rank: list[dict], checkpoint_bytes: int) -> dict:
    """Figures of one load over all ranks: ``read_ratio`` = bytes all ranks read to load
    (data + metadata) / checkpoint size; ``verify_ratio`` the same for the integrity check."""
    read = sum(r["bytes_read"] for r in per_rank)
    verify = sum(r["verify_bytes"] for r in per_rank)
    return {"checkpoint_bytes": checkpoint_bytes, "bytes_read_total": read,
            "bytes_read_max": max((r["bytes_read"] for r in per_rank), default=0),
            "read_ratio": round(read / checkpoint_bytes, 3) if checkpoint_bytes else None,
            "verify_ratio": round(verify / checkpoint_bytes, 3) if checkpoint_bytes else None,
            "load_seconds_max": round(max((r["seconds"] for r in per_rank), default=0), 3)}


def now() -> float:
    return time.perf_counter()
