"""Per-file work on Ray Data, committed per input file so an interrupted run resumes.

Layout under ``OUTPUT/_work``::

    stage1/<file_key>/part-*.parquet   every input row of that file, with its status
    stage1/<file_key>/_SUCCESS         written last; a directory without it (or whose first line is
                                       not STAGE1_FORMAT) is ignored
    staging-<uuid>/                    a Ray Data write in progress (deleted on restart)

A group of pending files is read, cleaned and written by one Ray Data job into
a fresh staging directory partitioned by file key; only when the whole write
has finished is each file's partition renamed into ``stage1/`` (an atomic
rename on POSIX) and its ``_SUCCESS`` marker written. A crash therefore leaves
either a complete file directory or nothing for it, and a rerun only processes
files without a marker.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from data_pipeline.readers import InputFile, iter_records

log = logging.getLogger(__name__)

SUCCESS = "_SUCCESS"
# First line of each _SUCCESS marker: the layout of the stage-1 rows. Bumped when a column that later
# steps read is added (2: doc_id), so a resume redoes files committed by an older version instead of
# failing in dedup on the missing column.
# 3: url, domain, meta, zh_script; rows dropped by the reader (WARC records that are not documents).
# 4: decontaminated_spans, decontaminated_from (the writer tallies them).
STAGE1_FORMAT = "stage1-format 4"
READ_COLUMNS = ("kind", "id", "text", "line", "source", "lang_hint", "url", "domain", "meta", "stage", "reason",
                "file", "error", "raw")


def stage1_dir(work: Path, key: str) -> Path:
    return work / "stage1" / key


def is_done(work: Path, key: str) -> bool:
    try:
        with open(stage1_dir(work, key) / SUCCESS, encoding="utf-8") as fh:
            return fh.readline().rstrip("\n") == STAGE1_FORMAT
    except OSError:
        return False


def reader_rows(item: dict, read_cfg: Any) -> Iterator[dict]:
    """Every record or quarantine row of one file, with uniform columns."""
    for rec in iter_records(item["path"], read_cfg, item["source"]):
        row = {k: rec.get(k) for k in READ_COLUMNS}
        row["file"] = item["path"]
        row["file_key"] = item["key"]
        yield row


def clean_files(files: pa.Table, cfg: Any) -> Iterator[pa.Table]:
    """Ray ``map_batches`` body: read each file and clean it ``ray.batch_size`` rows at a time.

    A generator, so one task holds one batch in memory, not the whole file.
    """
    from data_pipeline.clean import clean_records

    for item in files.to_pylist():
        rows = reader_rows(item, cfg.read)
        while batch := list(itertools.islice(rows, int(cfg.ray.batch_size))):
            yield clean_records(batch, cfg)


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

    from data_pipeline.config import plain

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = bool(cfg.ray.progress)
    ctx.verbose_stats_logs = False
    staging = work / f"staging-{uuid.uuid4().hex[:12]}"
    items = [{"path": f.path, "key": f.key, "source": f.source} for f in files]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    # One operator reads, cleans and (fused by Ray Data: same resources) writes each file, so every
    # task runs on one of a few warm workers. Reading as a separate operator cost more than the
    # cleaning it fed on a 2-core machine: the extra operator's tasks kept starting cold workers
    # (2-3 CPU-s of imports each) and Ray Data's per-operator budget ran the cleaning tasks one at a
    # time. Parallelism is therefore per file, as in datatrove and Ray Data's own readers.
    ds = ds.map_batches(clean_files, fn_args=(plain(cfg),), batch_size=1, batch_format="pyarrow", num_cpus=1)
    ds.write_parquet(str(staging), partition_cols=["file_key"], ray_remote_args={"num_cpus": 1})
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
        _atomic_touch(target / SUCCESS, f"{STAGE1_FORMAT}\n{f.path}\n")
    shutil.rmtree(staging, ignore_errors=True)


def _warn_if_too_few_files(pending: int, group: int) -> None:
    """Say so when files, the unit of parallelism, are fewer than the CPUs that could clean them."""
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    busy = min(pending, group)
    if 0 < busy < cpus:
        log.warning("stage 1 cleans one file per task, so %d file(s) per job keep only %d of %d CPUs busy; "
                    "split the input into more files or raise resume.files_per_commit", busy, busy, cpus)


def run_stage1(files: list[InputFile], cfg: Any, work: Path) -> dict[str, int]:
    """Process every file without a _SUCCESS marker; return how many were processed and reused."""
    clear_stale_staging(work)
    pending = [f for f in files if not is_done(work, f.key)]
    group = int(cfg.resume.files_per_commit)
    _warn_if_too_few_files(len(pending), group)
    for start in range(0, len(pending), group):
        run_group(pending[start:start + group], cfg, work)
    return {"files_processed": len(pending), "files_reused": len(files) - len(pending)}
