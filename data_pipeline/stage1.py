"""Per-file work on Ray Data, committed per input file so an interrupted run resumes.

Layout under ``OUTPUT/_work``::

    stage1/<file_key>/part-*.parquet   every input row of that file, with its status
    stage1/<file_key>/_SUCCESS         written last; a directory without it is ignored
    staging-<uuid>/                    a Ray Data write in progress (deleted on restart)

A group of pending files is read, cleaned and written by one Ray Data job into
a fresh staging directory partitioned by file key; only when the whole write
has finished is each file's partition renamed into ``stage1/`` (an atomic
rename on POSIX) and its ``_SUCCESS`` marker written. A crash therefore leaves
either a complete file directory or nothing for it, and a rerun only processes
files without a marker.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from data_pipeline.readers import InputFile, iter_records

SUCCESS = "_SUCCESS"
READ_COLUMNS = ("kind", "id", "text", "line", "source", "lang_hint", "file", "error", "raw")


def stage1_dir(work: Path, key: str) -> Path:
    return work / "stage1" / key


def is_done(work: Path, key: str) -> bool:
    return (stage1_dir(work, key) / SUCCESS).exists()


def read_file_rows(item: dict, read_cfg: Any) -> list[dict]:
    """Ray flat_map body: every record or quarantine row of one file, with uniform columns."""
    rows = []
    for rec in iter_records(item["path"], read_cfg, item["source"]):
        row = {k: rec.get(k) for k in READ_COLUMNS}
        row["file"] = item["path"]
        row["file_key"] = item["key"]
        rows.append(row)
    return rows


def clear_stale_staging(work: Path) -> None:
    """Remove half-written jobs from an interrupted run: their files get redone."""
    if work.exists():
        for child in work.iterdir():
            if child.name.startswith("staging-"):
                shutil.rmtree(child, ignore_errors=True)


def _atomic_touch(path: Path, content: str = "") -> None:
    tmp = path.with_name(path.name + f".tmp-{uuid.uuid4().hex}")
    tmp.write_text(content)
    os.replace(tmp, path)


def run_group(files: list[InputFile], cfg: Any, work: Path) -> None:
    """Read, clean and sign one group of files in one Ray Data job, then commit each file."""
    import ray.data

    from data_pipeline.clean import clean_batch
    from data_pipeline.config import plain

    ctx = ray.data.DataContext.get_current()
    ctx.target_max_block_size = int(cfg.ray.block_bytes)  # many small blocks: one big file spreads over workers
    ctx.enable_progress_bars = bool(cfg.ray.progress)
    ctx.verbose_stats_logs = False
    plain_cfg = plain(cfg)
    staging = work / f"staging-{uuid.uuid4().hex[:12]}"
    items = [{"path": f.path, "key": f.key, "source": f.source} for f in files]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    # Cleaning runs as plain tasks, not actors: Ray keeps worker processes alive between jobs, so the
    # imports and the language model (loaded once per process) are paid once per worker, not per job.
    # Reading and writing ask for a sliver of a CPU; the different resource shape also keeps Ray from
    # fusing read and clean into one task per file, so the blocks of one big file spread over workers.
    ds = ds.flat_map(read_file_rows, fn_args=(plain_cfg["read"],), num_cpus=0.1)
    ds = ds.map_batches(clean_batch, fn_args=(plain_cfg,), batch_size=int(cfg.ray.batch_size),
                        batch_format="pyarrow", num_cpus=1)
    ds.write_parquet(str(staging), partition_cols=["file_key"], ray_remote_args={"num_cpus": 0.1})
    for f in files:
        produced = staging / f"file_key={f.key}"
        target = stage1_dir(work, f.key)
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        if produced.exists():
            os.replace(produced, target)
        else:  # cannot happen for a readable path (every file yields at least one row); be explicit anyway
            target.mkdir(parents=True)
        _atomic_touch(target / SUCCESS, f.path + "\n")
    shutil.rmtree(staging, ignore_errors=True)


def run_stage1(files: list[InputFile], cfg: Any, work: Path) -> dict[str, int]:
    """Process every file without a _SUCCESS marker; return how many were processed and reused."""
    clear_stale_staging(work)
    pending = [f for f in files if not is_done(work, f.key)]
    group = int(cfg.resume.files_per_commit)
    for start in range(0, len(pending), group):
        run_group(pending[start:start + group], cfg, work)
    return {"files_processed": len(pending), "files_reused": len(files) - len(pending)}
