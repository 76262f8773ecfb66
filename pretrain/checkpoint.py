"""Distributed checkpoints: save, resume (at any TP/PP/DP), keep-last-N, a crash-safe marker.

Layout (``run_dir/checkpoints``)::

    iter_0000100/          megatron dist_checkpointing (torch_dist) directory
        run_config.yaml    the resolved config that wrote it (rebuilds the model)
        common.pt, metadata.json, __*.distcp ...
        checkpoint_accounting.json  per rank: bytes written, peak extra RSS of the save
        integrity.json     size + xxh3-64 of every other file (written at finalize,
                           verified before every load; see verify_checkpoint)
    latest                 text: "iter_0000100" -- written (temp + os.replace) only
                           after every rank finished writing that checkpoint

A checkpoint directory without the marker pointing at it is never loaded
automatically, so a run killed mid-save resumes from the previous one. One whose
files do not match integrity.json is moved to ``run_dir/checkpoints_rejected/``
on auto-resume and the previous one is loaded (:func:`resume_with_fallback`).
``python -m pretrain.checkpoint verify DIR`` checks one offline.

Scaling (docs/checkpointing.md): saves go through megatron's fully parallel save wrapper
(every data-parallel rank writes an even share of the replicated tensors), loads through
the fully parallel load wrapper (each shard read once in a DP group, then exchanged), the
sharding of the save is validated on a writer's first save only, and old checkpoints are
pruned by a background thread on rank 0, off the training path.

State: ``model`` (or ``model0``.. per virtual stage), ``optimizer`` (megatron's
sharded optimizer state; ``checkpoint.optimizer_sharding``: dp_reshardable by default,
written by each rank without a gather, resumable at another DP only; fully_reshardable
for TP/PP changes, or convert with ``pretrain.tools.reshard_checkpoint``), ``rng_state``
(one ShardedObject per rank; restored only when the layout is unchanged),
and plain values ``iteration``, ``consumed_samples``, ``scheduler``,
``layout``, ``tokens`` (rank 0 writes these to common.pt).
"""

from __future__ import annotations

import json
import os
import queue
import random
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import xxhash
from omegaconf import DictConfig, OmegaConf

from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject

from pretrain.config.resolve import (  # noqa: F401 (re-exported: one place for checkpoint paths)
    LATEST,
    RUN_CONFIG,
    checkpoint_name,
    checkpoints_root,
    finalized_checkpoints,
    latest_checkpoint,
    resolve_load_dir,
    saved_run_config,
)

from pretrain.checkpoint_accounting import (
    PeakRss,
    bytes_written_by,
    count_reads,
    now,
    summarize_load,
    summarize_save,
)

OPTIMIZER_SHARDING = ("dp_reshardable", "fully_reshardable")
ACCOUNTING = "checkpoint_accounting.json"
LOAD_ACCOUNTING = "checkpoint_accounting"  # run_dir/checkpoint_accounting/load_iter_*.json


def optimizer_metadata(cfg: DictConfig) -> dict[str, str]:
    """``checkpoint.optimizer_sharding``: dp_reshardable (each rank writes its own optimizer
    shard, no gather; a resume may change DP only) or fully_reshardable (TP/PP/DP may change;
    megatron all-gathers each TP/PP slice's optimizer state on every DP rank while saving:
    DP x the rank's shard of host memory, at 52B tens of GB per rank)."""
    kind = cfg.checkpoint.optimizer_sharding
    if kind not in OPTIMIZER_SHARDING:
        raise ValueError(f"checkpoint.optimizer_sharding={kind!r}: use one of {OPTIMIZER_SHARDING}")
    return {"distrib_optim_sharding_type": kind}


def _fully_parallel(cfg: DictConfig) -> bool:
    return bool(cfg.checkpoint.get("fully_parallel", True))


def _dp_group():
    return parallel_state.get_data_parallel_group(with_context_parallel=True)


def save_strategy(cfg: DictConfig):
    """torch_dist, wrapped so the save of replicated tensors is spread over the DP group.

    Without the wrapper only the ranks whose replica_id is 0 (DP rank 0 of each TP/PP slice)
    write the model weights. ``do_cache_distribution``: the state's structure is the same at
    every save of a run, so the distribution is computed (one metadata all-gather) once."""
    from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy
    from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelSaveStrategyWrapper

    base = get_default_save_sharded_strategy("torch_dist")
    if not _fully_parallel(cfg):
        return base
    return FullyParallelSaveStrategyWrapper(base, _dp_group(), do_cache_distribution=True)


def load_strategy(directory: str | Path, cfg: DictConfig | None):
    """The checkpoint's own strategy, wrapped (DP > 1) so each DP group reads every shard
    once and exchanges it, instead of every replica reading its full copy."""
    from megatron.core.dist_checkpointing.serialization import get_default_load_sharded_strategy
    from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelLoadStrategyWrapper

    base = get_default_load_sharded_strategy(str(directory))
    if cfg is None or not _fully_parallel(cfg) or dist.get_world_size(_dp_group()) == 1:
        return base
    return FullyParallelLoadStrategyWrapper(base, _dp_group())


class CheckpointLayoutError(RuntimeError):
    """A resume the checkpoint's optimizer layout cannot serve (says what to do instead)."""


def check_resumable(common: dict, cfg: DictConfig) -> None:
    """A dp_reshardable optimizer state is the distributed optimizer's flat per-bucket
    buffers: loadable only with the same TP, PP and virtual stages (DP may change). Raise
    naming the key and the offline converter instead of megatron's shape assertion."""
    saved = saved_sharding(common.get("optimizer"))
    layout, here = common.get("layout") or {}, current_layout(cfg)
    changed = {k: (layout.get(k), here[k]) for k in ("tp", "pp", "vpp") if layout.get(k, here[k]) != here[k]}
    if saved == "dp_reshardable" and changed:
        what = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items())
        raise CheckpointLayoutError(
            f"checkpoint's optimizer state was saved with checkpoint.optimizer_sharding=dp_reshardable "
            f"(common.pt optimizer.param_state_sharding_type), which resumes at another DP only; this "
            f"run changes {what}. Convert it offline on the old layout: torchrun --nproc_per_node="
            f"{_world_of(layout)} -m pretrain.tools.reshard_checkpoint SRC DST_RUN_DIR (writes "
            f"fully_reshardable), then resume with checkpoint.load=DST_RUN_DIR/checkpoints/<iter>")


def saved_sharding(optimizer_common: Any) -> str | None:
    """The distributed optimizer's ``param_state_sharding_type`` in common.pt (nested per
    sub-optimizer for a chained optimizer); None without a distributed optimizer."""
    if isinstance(optimizer_common, dict):
        if "param_state_sharding_type" in optimizer_common:
            return optimizer_common["param_state_sharding_type"]
        for value in optimizer_common.values():
            if (found := saved_sharding(value)) is not None:
                return found
    return None


def _world_of(layout: dict) -> int | str:
    try:
        return int(layout["tp"]) * int(layout["pp"]) * int(layout["dp"])
    except (KeyError, TypeError, ValueError):
        return "<old world size>"





def write_latest_marker(run_dir: str | Path, iteration: int) -> None:
    """Atomically point ``latest`` at a fully written checkpoint."""
    root = checkpoints_root(run_dir)
    tmp = root / f".{LATEST}.tmp.{os.getpid()}"
    tmp.write_text(checkpoint_name(iteration) + "\n")
    os.replace(tmp, root / LATEST)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    root = checkpoints_root(run_dir)
    return sorted(p for p in root.glob("iter_*") if p.is_dir()) if root.is_dir() else []


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints (never the latest)."""
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return []
    complete = [p for p in list_checkpoints(run_dir) if p.name <= latest.name]
    doomed = complete[:-keep_last] if keep_last > 0 else []
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


# ----------------------------------------------------------------------------
# Integrity: size and xxh3-64 of every file, recorded at save, verified before load
# ----------------------------------------------------------------------------

INTEGRITY = "integrity.json"
HASH_ALGORITHM = "xxh3_64"
_HASH_CHUNK = 8 << 20
REJECTED = "checkpoints_rejected"


class CheckpointRejected(RuntimeError):
    """A checkpoint that failed verification or loading. ``file`` names the bad file (relative
    to ``directory``; the directory itself when no single file could be blamed).
    ``blamed``: False when no file could be blamed (the files match integrity.json, or an
    older checkpoint without it shows no missing/short file): most likely a config or code
    mismatch, which an older checkpoint would not fix, so auto-resume raises instead of
    moving every checkpoint aside."""

    def __init__(self, directory: str | Path, file: str, reason: str,
                 problems: list[tuple[str, str]] | None = None, blamed: bool = True) -> None:
        self.directory, self.file, self.reason = Path(directory), file, reason
        self.problems = problems or [(file, reason)]
        self.blamed = blamed
        more = f" (and {len(self.problems) - 1} more: " + ", ".join(f for f, _ in self.problems[1:6]) + ")" \
            if len(self.problems) > 1 else ""
        super().__init__(f"checkpoint {self.directory} is unusable: {self.directory / file}: {reason}{more}")


def hash_file(path: str | Path) -> str:
    digest = xxhash.xxh3_64()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_files(directory: str | Path) -> list[str]:
    """Every file under ``directory`` (relative POSIX paths, sorted), integrity.json aside."""
    directory = Path(directory)
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                  if p.is_file() and p.name != INTEGRITY)


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def write_integrity(directory: str | Path) -> dict | None:
    """Collective (every rank, after every rank finished writing): file ``i`` of the sorted
    listing is sized and hashed by rank ``i % world``; rank 0 gathers the entries and writes
    ``integrity.json`` (temp + rename). Returns the record on rank 0."""
    directory = Path(directory)
    rank, world = _rank_world()
    listing = [checkpoint_files(directory) if rank == 0 else None]
    if world > 1:  # one listing for all, so the shares never overlap or miss a file
        dist.broadcast_object_list(listing, src=0)
    start = time.perf_counter()
    mine = {name: {"size": (directory / name).stat().st_size, HASH_ALGORITHM: hash_file(directory / name)}
            for i, name in enumerate(listing[0]) if i % world == rank}
    seconds = time.perf_counter() - start
    gathered = [(mine, seconds)]
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, (mine, seconds))
    if rank != 0:
        return None
    files = {name: entry for part, _ in gathered for name, entry in part.items()}
    record = {"algorithm": HASH_ALGORITHM, "bytes": sum(e["size"] for e in files.values()),
              "hash_seconds_slowest_rank": round(max(s for _, s in gathered), 4),
              "files": dict(sorted(files.items()))}
    tmp = directory / f".{INTEGRITY}.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, directory / INTEGRITY)
    return record


def verify_files(directory: str | Path, rank: int = 0, world: int = 1) -> list[tuple[str, str]] | None:
    """(file, reason) for each recorded file of this rank's share (``i % world == rank``)
    that is missing, has another size, or another hash; None when there is no integrity.json
    (a checkpoint from before it existed: unverifiable, not bad)."""
    directory = Path(directory)
    path = directory / INTEGRITY
    if not path.is_file():
        return None
    try:
        files = json.loads(path.read_text())["files"]
    except (ValueError, KeyError, TypeError) as error:
        return [(INTEGRITY, f"unreadable ({type(error).__name__}: {error})")] if rank == 0 else []
    problems = []
    for i, (name, want) in enumerate(sorted(files.items())):
        if i % world != rank:
            continue
        file = directory / name
        if not file.is_file():
            problems.append((name, "missing"))
            continue
        size = file.stat().st_size
        if size != want["size"]:
            problems.append((name, f"size {size} bytes, recorded {want['size']} (truncated or rewritten)"))
        elif hash_file(file) != want[HASH_ALGORITHM]:
            problems.append((name, f"content changed ({HASH_ALGORITHM} differs from integrity.json, same size)"))
    return problems


def verify_checkpoint(directory: str | Path) -> list[tuple[str, str]] | None:
    """:func:`verify_files` over the process group (when there is one): every rank checks its
    share, the results are all-gathered, so every rank gets the same verdict and takes the
    same path. [] = verified, None = no integrity.json."""
    rank, world = _rank_world()
    local = verify_files(directory, rank, world)
    if world == 1:
        return local
    gathered: list = [None] * world
    dist.all_gather_object(gathered, local)
    if any(part is None for part in gathered):
        return None
    return sorted({tuple(problem) for part in gathered for problem in part})


def diagnose_files(directory: str | Path) -> list[tuple[str, str]]:
    """Without a usable integrity record: files that torch_dist's ``.metadata`` expects but are
    missing or shorter than the last byte it reads from them, and a missing common.pt /
    metadata.json. Cheap (sizes only); finds truncation, not rewritten bytes."""
    directory = Path(directory)
    problems = [(name, "missing") for name in ("metadata.json", "common.pt") if not (directory / name).is_file()]
    try:
        from torch.distributed.checkpoint import FileSystemReader

        storage = FileSystemReader(str(directory)).read_metadata().storage_data or {}
    except Exception as error:  # noqa: BLE001 (a broken .metadata is itself the finding)
        return problems + [(".metadata", f"unreadable ({type(error).__name__}: {error})")]
    needed: dict[str, int] = {}
    for info in storage.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, end in sorted(needed.items()):
        file = directory / name
        if not file.is_file():
            problems.append((name, "missing"))
        elif file.stat().st_size < end:
            problems.append((name, f"size {file.stat().st_size} bytes, .metadata reads up to byte {end} (truncated)"))
    return problems


def _point_latest(root: Path, name: str) -> None:
    tmp = root / f".{LATEST}.tmp.{os.getpid()}"
    tmp.write_text(name + "\n")
    os.replace(tmp, root / LATEST)


def reject_checkpoint(run_dir: str | Path, bad: CheckpointRejected) -> Path:
    """Rank 0: move a bad checkpoint to ``run_dir/checkpoints_rejected/`` (kept for a post-mortem)."""
    target = Path(run_dir) / REJECTED / bad.directory.name
    if target.exists():
        target = target.with_name(f"{target.name}.{int(time.time())}")
    target.parent.mkdir(parents=True, exist_ok=True)
    bad.directory.rename(target)
    return target


def append_event(run_dir: str | Path, row: dict) -> None:
    """One event row in metrics.jsonl, written before the run's monitor opens the file."""
    from pretrain.train.monitor import METRICS, append_jsonl

    append_jsonl(Path(run_dir) / METRICS, {**row, "time": time.time()})


def resume_with_fallback(run_dir: str | Path, root: str | Path, load_dir: Path, auto: bool,
                         load: Callable[[Path], "TrainProgress"]) -> tuple["TrainProgress", Path]:
    """Load ``load_dir``; under ``checkpoint.load=auto`` a checkpoint rejected for its files
    (integrity mismatch, a missing or truncated file) is moved aside, ``latest`` moves to the newest older finalised
    checkpoint, and that one is tried. Every rank takes the same path (the verdicts are
    collective). An explicit directory, or a load error no file can be blamed for,
    raises :class:`CheckpointRejected` naming the file."""
    rank, world = _rank_world()
    root = Path(root)
    rejected: list[dict] = []
    while True:
        try:
            progress = load(load_dir)
            break
        except CheckpointRejected as bad:
            if not auto or not bad.blamed:
                raise
            older = finalized_checkpoints(root, before=bad.directory.name)
            if rank == 0:
                moved = reject_checkpoint(run_dir, bad)
                row = {"event": "checkpoint_rejected", "path": str(bad.directory), "file": bad.file,
                       "reason": bad.reason, "moved_to": str(moved),
                       "fallback": older[-1].name if older else None}
                rejected.append(row)
                print(f"checkpoint rejected: {bad}; moved to {moved}; "
                      f"{'falling back to ' + older[-1].name if older else 'no older checkpoint'}",
                      file=sys.stderr, flush=True)
                if older:
                    _point_latest(root, older[-1].name)
            if world > 1:
                dist.barrier()
            if not older:
                if rank == 0:
                    for row in rejected:
                        append_event(run_dir, {**row, "step": 0, "resumed_from": None})
                raise RuntimeError(f"no loadable checkpoint left in {root}: {bad}") from bad
            load_dir = older[-1]
    if rank == 0:
        for row in rejected:
            append_event(run_dir, {**row, "step": progress.iteration, "resumed_from": load_dir.name})
    return progress, load_dir




# ----------------------------------------------------------------------------
# What goes into a checkpoint
# ----------------------------------------------------------------------------

@dataclass
class TrainProgress:
    iteration: int = 0
    consumed_samples: int = 0
    tokens: int = 0
    # Loop state beyond the data position (spike guard: skipped sample ranges, detector window).
    trainer_state: dict = field(default_factory=dict)


def current_layout(cfg: DictConfig) -> dict[str, int]:
    p = cfg.parallel
    return {"tp": p.tensor_model_parallel_size, "pp": p.pipeline_model_parallel_size,
            "dp": p.data_parallel_size, "vpp": p.virtual_pipeline_model_parallel_size or 0}


def _rng_state() -> dict[str, Any]:
    return {"random": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}


def _restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _rng_sharded_object(state: Any) -> ShardedObject:
    rank, world = dist.get_rank(), dist.get_world_size()
    return ShardedObject("rng_state", state, (world,), (rank,), replica_id=0)


def _model_key(index: int, num_chunks: int) -> str:
    return "model" if num_chunks == 1 else f"model{index}"


def _unwrap(chunk: torch.nn.Module) -> torch.nn.Module:
    while hasattr(chunk, "module"):
        chunk = chunk.module
    return chunk


def sharded_state(model_chunks: list, optimizer, scheduler, progress: TrainProgress, cfg: DictConfig,
                  with_rng: bool, with_optimizer: bool, is_loading: bool,
                  sharding: str | None = None) -> dict[str, Any]:
    """The state to save, or the template to load into. ``sharding``: the optimizer layout
    when it is not the config's (a load follows the layout the checkpoint was saved with)."""
    state: dict[str, Any] = {}
    for i, chunk in enumerate(model_chunks):
        state[_model_key(i, len(model_chunks))] = _unwrap(chunk).sharded_state_dict()
    if with_optimizer and optimizer is not None:
        metadata = {"distrib_optim_sharding_type": sharding} if sharding else optimizer_metadata(cfg)
        state["optimizer"] = optimizer.sharded_state_dict(state, is_loading=is_loading, metadata=metadata)
    if with_rng:
        state["rng_state"] = _rng_sharded_object(_rng_state())
    state["iteration"] = progress.iteration
    state["consumed_samples"] = progress.consumed_samples
    state["tokens"] = progress.tokens
    state["trainer_state"] = progress.trainer_state
    state["scheduler"] = scheduler.state_dict() if scheduler is not None else None
    state["layout"] = current_layout(cfg)
    return state


# ----------------------------------------------------------------------------
# Save
# ----------------------------------------------------------------------------

def save_synchronously(state: dict, directory: str | Path, sharded_strategy=None,
                       validate_access_integrity: bool = True) -> None:
    """``dist_checkpointing.save`` with the writers' results collected in this process.

    megatron-core 0.16 hands every save a ``multiprocessing.Manager().Queue()``
    (a spawned server process), needed when an async save writes from another
    process. The server imports torch to unpickle the first results it receives:
    on a 2-core CPU box a process' first save took 4.5-7 s with 2 processes and
    16-20 s with 8 (now < 1 s). A synchronous save runs its forked writers with
    their own local queue and reads the results in the saving process itself, so
    a plain queue serves. Every synchronous save in the project goes through here.
    """
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    manager_queue = filesystem_async._get_write_results_queue
    filesystem_async._get_write_results_queue = queue.Queue
    try:
        dist_checkpointing.save(state, str(directory), sharded_strategy=sharded_strategy,
                                validate_access_integrity=validate_access_integrity)
    finally:
        filesystem_async._get_write_results_queue = manager_queue


class CheckpointSaveFailed(RuntimeError):
    """A save that did not complete: names the checkpoint, the error and the free space left, and
    says which checkpoint the next run resumes from."""


FULL_DISK_BYTES = 64 << 20
"""Free space under which a failed save is called a full disk (torch's writers report ENOSPC as an
unrelated-looking 'unexpected pos' from the zip writer, or not at all)."""


def _checkpoint_exception() -> type[BaseException]:
    from torch.distributed.checkpoint.api import CheckpointException

    return CheckpointException


def _last_line(exc: BaseException) -> str:
    """The line of a (possibly multi-rank, multi-traceback) error that says what failed."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"


def save_failed(run_dir: str | Path, directory: Path, exc: BaseException) -> CheckpointSaveFailed:
    """Clean up after a save that raised, and the error to raise instead.

    The half-written directory is removed (rank 0; every rank raises, the writers' failures are
    gathered): it can never be loaded (no integrity.json, ``latest`` does not name it), and on a full
    disk its bytes are what the next run needs to save again. Not removed if ``latest`` already names
    it (the failure came after the marker moved: the checkpoint is complete).
    """
    try:
        free: int | None = shutil.disk_usage(directory.parent).free
    except OSError:
        free = None
    latest = latest_checkpoint(run_dir)
    removed = latest is None or latest.name != directory.name
    if removed and (not dist.is_initialized() or dist.get_rank() == 0):
        shutil.rmtree(directory, ignore_errors=True)
    disk = ("unknown free space" if free is None else
            f"the filesystem is full ({free} bytes free)" if free < FULL_DISK_BYTES else f"{free} bytes free")
    resume_from = latest.name if latest is not None else "nothing (a fresh start)"
    return CheckpointSaveFailed(
        f"saving checkpoint {directory} failed: {_last_line(exc)}; {disk}; "
        + (f"the partial checkpoint was removed; `latest` names {resume_from}, which a rerun with "
           f"checkpoint.load=auto resumes from once there is space" if removed else
           "the checkpoint was complete (`latest` names it)"))


class CheckpointWriter:
    """Writes checkpoints, synchronously or through megatron's async queue.

    Async: the state is snapshotted to host memory and written by a forked
    process while training continues; :meth:`poll` (called every step, on
    every rank) finalises finished saves: run_config.yaml, the accounting, integrity.json,
    the ``latest`` marker; pruning then runs in a background thread on rank 0.

    ``accounting``: iteration -> the save's figures over all ranks (rank 0; see
    :mod:`pretrain.checkpoint_accounting`), also written per rank to the checkpoint's
    ``checkpoint_accounting.json`` and put on its ``checkpoint`` metrics row.
    """

    def __init__(self, cfg: DictConfig, resolved_config: DictConfig, async_save: bool) -> None:
        self.cfg = cfg
        self.resolved_config = resolved_config
        self.async_save = async_save
        self.saved: list[int] = []
        self.accounting: dict[int, dict] = {}
        self._in_flight: Path | None = None  # the async save not finalised yet (named if it fails)
        self._queue = None
        self._strategy = None    # built at the first save (needs the process groups); cached
        self._validated = False  # validate_access_integrity on the first save only
        self._pruner: threading.Thread | None = None
        if async_save:
            from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

            self._queue = AsyncCallsQueue(persistent=False)

    def _finalize(self, iteration: int, directory: Path, stats: dict) -> Callable[[], None]:
        def finalize() -> None:
            rank, world = dist.get_rank(), dist.get_world_size()
            dist.barrier()  # every rank's files are on disk
            written, files = bytes_written_by(directory, rank)
            per_rank = [None] * world
            dist.all_gather_object(per_rank, {"rank": rank, "bytes_written": written, "files": files, **stats})
            if rank == 0:
                OmegaConf.save(self.resolved_config, directory / RUN_CONFIG, resolve=True)
                summary = summarize_save(per_rank)
                self.accounting[iteration] = summary
                record = {"iteration": iteration, "optimizer_sharding": self.cfg.checkpoint.optimizer_sharding,
                          "fully_parallel": _fully_parallel(self.cfg), "layout": current_layout(self.cfg),
                          "summary": summary, "ranks": per_rank}
                (directory / ACCOUNTING).write_text(json.dumps(record, indent=1) + "\n")
            write_integrity(directory)  # collective: rank 0 lists the files (after writing them above)
            if rank == 0:
                write_latest_marker(self.cfg.run_dir, iteration)
                self._prune_in_background()
            dist.barrier()  # every rank sees the new `latest` (a rollback reads it)
            self.saved.append(iteration)
            self._in_flight = None
        return finalize

    def _prune_in_background(self) -> None:
        """Rank 0 deletes old checkpoints in a thread: an rmtree of a 52B checkpoint (hundreds
        of files on a parallel filesystem) takes seconds to minutes that no rank should wait on."""
        self._join_pruner()
        self._pruner = threading.Thread(target=prune_checkpoints, name="checkpoint-prune", daemon=True,
                                        args=(self.cfg.run_dir, int(self.cfg.checkpoint.keep_last)))
        self._pruner.start()

    def _join_pruner(self) -> None:
        if self._pruner is not None:
            self._pruner.join()
            self._pruner = None

    def save(self, model_chunks: list, optimizer, scheduler, progress: TrainProgress) -> Path:
        directory = checkpoints_root(self.cfg.run_dir) / checkpoint_name(progress.iteration)
        self.wait()  # one save in flight at a time; before the mkdir, so a failed one leaves no empty dir
        if dist.get_rank() == 0:
            if directory.exists():  # leftovers of a save that never completed
                shutil.rmtree(directory)
            directory.mkdir(parents=True)
        dist.barrier()
        if self._strategy is None:
            self._strategy = save_strategy(self.cfg)
        validate, self._validated = not self._validated, True
        start = now()
        try:
            with PeakRss() as rss:
                state = sharded_state(model_chunks, optimizer, scheduler, progress, self.cfg,
                                      with_rng=True, with_optimizer=True, is_loading=False)
                if self._queue is None:
                    save_synchronously(state, directory, self._strategy, validate)
                else:
                    request = dist_checkpointing.save(state, str(directory), sharded_strategy=self._strategy,
                                                      validate_access_integrity=validate, async_sharded_save=True)
                del state
            stats = {"seconds": round(now() - start, 4), "rss_before": rss.before,
                     "peak_extra_rss": rss.extra, "rss_method": rss.method}
            finalize = self._finalize(progress.iteration, directory, stats)
            if self._queue is None:
                finalize()
        except (Exception, _checkpoint_exception()) as exc:  # torch DCP's CheckpointException is a BaseException
            raise save_failed(self.cfg.run_dir, directory, exc) from exc
        if self._queue is not None:
            request.add_finalize_fn(finalize)
            self._in_flight = directory
            self._queue.schedule_async_request(request)
        return directory

    def _finalize_async(self, blocking: bool) -> None:
        """An async save's write errors surface here, when it is finalised: named like a sync one's."""
        try:
            self._queue.maybe_finalize_async_calls(blocking=blocking)
        except (Exception, _checkpoint_exception()) as exc:
            if self._in_flight is None:
                raise
            directory, self._in_flight = self._in_flight, None
            raise save_failed(self.cfg.run_dir, directory, exc) from exc

    def poll(self) -> None:
        if self._queue is not None:
            self._finalize_async(blocking=False)

    def wait(self) -> None:
        if self._queue is not None:
            self._finalize_async(blocking=True)
        self._join_pruner()

    def close(self) -> None:
        if self._queue is not None:
            self.wait()
            self._queue.close()
        self._join_pruner()


# ----------------------------------------------------------------------------
# Load
# ----------------------------------------------------------------------------

def materialize_optimizer_state(optimizer) -> None:
    """Give a fresh optimizer its state tensors, so a checkpoint can be loaded into them.

    megatron builds the loading template from the optimizer's own state, which
    torch's Adam creates lazily on the first step.  A step with zero gradients
    creates it; everything it touches is overwritten by the load that follows.
    """
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        torch_optimizer = getattr(inner, "optimizer", None)
        if torch_optimizer is None or len(torch_optimizer.state) > 0:
            continue
        for group in torch_optimizer.param_groups:
            for param in group["params"]:
                param.grad = torch.zeros_like(param)
        torch_optimizer.step()
        torch_optimizer.zero_grad()


def tolerate_torch_adam_step(optimizer) -> None:
    """Work around megatron-core 0.16's distributed-optimizer loads with torch's Adam.

    Without apex/TE megatron falls back to ``torch.optim.AdamW``, whose state
    has a per-param ``step``; the loader sets ``step`` from the param groups but
    then copies every *destination* state key from the checkpoint tensors:
    fully_reshardable's never hold ``step`` (KeyError), and dp_reshardable's hold
    the template's ``step`` (a non-persistent value captured before the load:
    the fresh optimizer's 1, so the bias correction restarts and a resume is no
    longer exact). The wrapper (on the instance, only when the method exists)
    hands the loader the ``step`` already restored from the param groups.
    """
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        setter = getattr(inner, "_set_main_param_and_optimizer_states", None)
        index_map = getattr(inner, "model_param_group_index_map", None)
        if setter is None or index_map is None or getattr(setter, "_tolerant", False):
            continue

        def tolerant(model_param, tensors, _inner=inner, _setter=setter, _index_map=index_map):
            group_index, group_order = _index_map[model_param]
            main_param = _inner.optimizer.param_groups[group_index]["params"][group_order]
            step = _inner.optimizer.state.get(main_param, {}).get("step")
            if step is not None:
                tensors = {**tensors, "step": step}
            return _setter(model_param, tensors)

        tolerant._tolerant = True
        inner._set_main_param_and_optimizer_states = tolerant


def untie_adam_steps(optimizer) -> None:
    """megatron-core 0.16 restores torch Adam's ``step`` as ONE tensor shared by every
    parameter; torch increments it in place per parameter, so after a resume the
    bias correction would advance N times per step. Give each parameter its own copy."""
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        torch_optimizer = getattr(inner, "optimizer", None)
        for state in getattr(torch_optimizer, "state", {}).values():
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].clone()


def load_checkpoint(directory: Path, model_chunks: list, optimizer, scheduler,
                    cfg: DictConfig) -> TrainProgress:
    """Restore model, optimizer, scheduler and (same layout only) RNG; return the progress.

    Verifies the files against integrity.json first (collective); raises
    :class:`CheckpointRejected` naming the file on a mismatch, and on any load error
    (naming the file a size check against torch_dist's ``.metadata`` blames, if any).
    A dp_reshardable checkpoint resumed at another TP/PP raises :class:`CheckpointLayoutError`
    (not blamed on a file: auto-resume does not move it aside). Every rank's read bytes go
    to ``run_dir/checkpoint_accounting/load_<iter>.json`` and a ``checkpoint_load`` row."""
    directory = Path(directory)
    start = now()
    problems = verify_checkpoint(directory)
    if problems:
        raise CheckpointRejected(directory, *problems[0], problems=problems)
    verify_seconds = now() - start
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

    try:
        with count_reads() as reads:
            progress = _load_checkpoint(directory, model_chunks, optimizer, scheduler, cfg)
    except CheckpointLayoutError as error:
        raise CheckpointRejected(directory, ".", str(error), blamed=False) from error
    except (Exception, CheckpointException) as error:  # noqa: BLE001 (re-raised, naming the file)
        raise _load_error(directory, error, verified=problems == []) from error
    _account_load(directory, cfg, progress.iteration, reads, start, verify_seconds)
    return progress


def _account_load(directory: Path, cfg: DictConfig, iteration: int, reads: dict, start: float,
                  verify_seconds: float) -> None:
    """Collective: gather every rank's read bytes; rank 0 writes the record and the row."""
    rank, world = _rank_world()
    metadata = sum((directory / name).stat().st_size for name in ("common.pt", ".metadata")
                   if (directory / name).is_file())  # every rank reads both
    integrity = directory / INTEGRITY
    recorded = json.loads(integrity.read_text())["files"] if integrity.is_file() else {}
    verify = sum(e["size"] for i, (_, e) in enumerate(sorted(recorded.items())) if i % world == rank)
    mine = {"rank": rank, "bytes_read": reads["bytes"] + metadata, "data_bytes_read": reads["bytes"],
            "read_items": reads["items"], "verify_bytes": verify,
            "verify_seconds": round(verify_seconds, 4), "seconds": round(now() - start, 4)}
    per_rank = [mine]
    if world > 1:
        per_rank = [None] * world
        dist.all_gather_object(per_rank, mine)
    if rank != 0:
        return
    size = sum((directory / name).stat().st_size for name in checkpoint_files(directory))
    summary = summarize_load(per_rank, size)
    out = Path(cfg.run_dir) / LOAD_ACCOUNTING / f"load_{directory.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"checkpoint": str(directory), "layout": current_layout(cfg),
                               "fully_parallel": _fully_parallel(cfg), "summary": summary,
                               "ranks": per_rank}, indent=1) + "\n")
    if iteration > 0:  # a step-0 load (a model-only HF import) starts a fresh log: no row before it
        append_event(cfg.run_dir, {"event": "checkpoint_load", "step": iteration, "path": str(directory),
                                   **summary})


def _load_error(directory: Path, error: Exception, verified: bool) -> CheckpointRejected:
    found = [] if verified else diagnose_files(directory)
    what = f"load failed: {type(error).__name__}: {error}"
    if found:
        return CheckpointRejected(directory, found[0][0], f"{found[0][1]}; {what}", problems=found)
    what += (" (every file matches integrity.json" if verified else " (no file missing or short")
    what += ": most likely a config or code mismatch, not a damaged file)"
    return CheckpointRejected(directory, ".", what, blamed=False)


def _load_checkpoint(directory: Path, model_chunks: list, optimizer, scheduler,
                     cfg: DictConfig) -> TrainProgress:
    if optimizer is not None:
        materialize_optimizer_state(optimizer)
    common = dist_checkpointing.load_common_state_dict(str(directory))
    if "optimizer" not in common:
        return load_model_only(directory, model_chunks)
    if optimizer is not None:
        check_resumable(common, cfg)
    same_layout = common.get("layout") == current_layout(cfg)
    # the template follows the checkpoint's optimizer layout, whatever this run will save with
    template = sharded_state(model_chunks, optimizer, scheduler, TrainProgress(), cfg,
                             with_rng=same_layout, with_optimizer=optimizer is not None,
                             is_loading=True, sharding=saved_sharding(common.get("optimizer")))
    with torch.no_grad():  # fp32 distributed-optimizer state is loaded into leaf tensors
        state = dist_checkpointing.load(template, str(directory),
                                        sharded_strategy=load_strategy(directory, cfg))
    for i, chunk in enumerate(model_chunks):
        _unwrap(chunk).load_state_dict(state[_model_key(i, len(model_chunks))])
    if optimizer is not None:
        tolerate_torch_adam_step(optimizer)
        with torch.no_grad():  # dp_reshardable copies into main params, the model's own leaves in fp32
            optimizer.load_state_dict(state["optimizer"])
        untie_adam_steps(optimizer)
    if scheduler is not None and state.get("scheduler"):
        scheduler.load_state_dict(state["scheduler"])
    if same_layout and state.get("rng_state") is not None:
        _restore_rng_state(state["rng_state"])
    return TrainProgress(iteration=int(state["iteration"]),
                         consumed_samples=int(state["consumed_samples"]),
                         tokens=int(state.get("tokens", 0)),
                         trainer_state=dict(state.get("trainer_state") or {}))


def load_model_only(directory: Path, model_chunks: list) -> TrainProgress:
    """Weights from a checkpoint that holds nothing else (``launch.import_hf``'s output).

    Continued pretraining from an imported Hugging Face model starts with fresh
    Adam moments, a fresh LR schedule and the data stream from its beginning:
    there is no training state to restore, and pretending otherwise would hide it.
    """
    template = {_model_key(i, len(model_chunks)): _unwrap(chunk).sharded_state_dict()
                for i, chunk in enumerate(model_chunks)}
    state = dist_checkpointing.load(template, str(directory))
    for i, chunk in enumerate(model_chunks):
        _unwrap(chunk).load_state_dict(state[_model_key(i, len(model_chunks))])
    if dist.get_rank() == 0:
        print(f"initialised from the model-only checkpoint {directory} (e.g. an HF import): "
              "fresh optimizer state, LR schedule and data position", flush=True)
    return TrainProgress()


def load_model_for_inference(checkpoint_dir: str | Path, dtype: torch.dtype = torch.float32):
    """A single-process TP1/PP1 ``GPTModel`` with the weights of any checkpoint.

    For exporters and evaluation: starts a 1-process gloo group if none exists,
    rebuilds the model from the checkpoint's ``run_config.yaml`` and loads only
    the model weights (whatever TP/PP wrote them). Returns ``(model, cfg)``.
    """
    from pretrain.cpu_shims import activate_cpu_shims
    from pretrain.model.teleflm import build_model

    activate_cpu_shims()
    checkpoint_dir = Path(checkpoint_dir)
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        if "MASTER_PORT" not in os.environ:
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                os.environ["MASTER_PORT"] = str(s.getsockname()[1])
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel()
        tensor_parallel.model_parallel_cuda_manual_seed(0)
    problems = verify_checkpoint(checkpoint_dir)
    if problems:
        raise CheckpointRejected(checkpoint_dir, *problems[0], problems=problems)
    cfg = saved_run_config(checkpoint_dir)
    cfg.parallel.update(tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
                        virtual_pipeline_model_parallel_size=None, data_parallel_size=1,
                        sequence_parallel=False)
    cfg.train.bf16 = dtype == torch.bfloat16
    cfg.train.recompute = "none"
    model = build_model(cfg, pre_process=True, post_process=True)
    state = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(checkpoint_dir))
    model.load_state_dict(state["model"])
    return model.eval(), cfg


# ----------------------------------------------------------------------------
# python -m pretrain.checkpoint verify DIR...
# ----------------------------------------------------------------------------

def verify_cli(directories: list[str]) -> int:
    """Offline check (no process group): exit 1 naming every bad file; a checkpoint without
    integrity.json is reported UNVERIFIABLE (size check against .metadata only), not bad.
    A checkpoints/ root (or a run dir) checks each ``iter_*`` under it."""
    status = 0
    targets: list[Path] = []
    for name in directories:
        path = Path(name)
        if not path.is_dir():
            print(f"BAD {path}: not a directory")
            status = 1
            continue
        inner = sorted(p for p in list(path.glob("iter_*")) + list(path.glob("checkpoints/iter_*")) if p.is_dir())
        targets += inner if inner and not (path / "metadata.json").is_file() else [path]
    for path in targets:
        start = time.perf_counter()
        problems = verify_files(path)
        seconds = time.perf_counter() - start
        if problems is None:
            short = diagnose_files(path)
            for file, reason in short:
                print(f"BAD {path / file}: {reason}")
            if short:
                status = 1
            else:
                print(f"UNVERIFIABLE {path}: no {INTEGRITY} (saved before integrity records); "
                      "sizes match .metadata")
            continue
        for file, reason in problems:
            print(f"BAD {path / file}: {reason}")
        if problems:
            status = 1
        else:
            record = json.loads((path / INTEGRITY).read_text())
            gb = record["bytes"] / 1e9
            print(f"OK {path}: {len(record['files'])} files, {gb:.3f} GB, {seconds:.2f} s "
                  f"({seconds / gb if gb else 0:.2f} s/GB)")
    return status


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or argv[0] != "verify":
        print("usage: python -m pretrain.checkpoint verify CHECKPOINT_DIR [...]", file=sys.stderr)
        return 2
    return verify_cli(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
