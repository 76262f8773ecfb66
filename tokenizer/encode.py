"""Encode the training and held-out shards into Megatron indexed datasets, one Ray task per shard.

Layout under TOK_DIR/indexed/:
  partials/<split>/<shard>/...          per-shard outputs (atomic, with DONE markers; resume point)
  train/<source>.bin/.idx               training data, one dataset per source (the trainer's blend)
  heldout/by_source/<source>.bin/.idx   held-out data for per-source validation loss
  heldout/by_lang/<lang>.bin/.idx       held-out data for per-language bits per byte
  manifest.json                         what the trainer reads
Merging concatenates the partials in shard-name order, so the same input gives
byte-identical files whatever order the Ray tasks finish in.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
from pathlib import Path

import ray
import sentencepiece as spm
from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder
from tqdm import tqdm

from tokenizer.data_source import DataDirError, list_shards, read_mixture
from tokenizer.shard_encoder import ShardJob, encode_shard, is_done, read_done

SPLITS = {"train": ("shards", ("source",)), "heldout": ("heldout", ("source", "lang"))}


def ensure_ray(cfg) -> None:
    """Join the configured cluster, or start a local one, unless the caller already did."""
    if ray.is_initialized():
        return
    address = cfg.ray.address
    ray.init(address=address, num_cpus=None if address else int(cfg.ray.num_cpus), include_dashboard=False,
             log_to_driver=False, configure_logging=False)


def plan_jobs(cfg, model_path: Path, partial_root: Path) -> dict[str, list[ShardJob]]:
    jobs = {}
    for split, (folder, group_by) in SPLITS.items():
        out = partial_root / split
        out.mkdir(parents=True, exist_ok=True)
        for leftover in out.glob(".*.tmp-*"):  # a task that crashed mid-shard
            shutil.rmtree(leftover)
        jobs[split] = [ShardJob(shard=str(shard.resolve()), out_dir=str(out / shard.stem), group_by=group_by,
                                model_path=str(model_path), batch_size=int(cfg.tokenizer.encode.batch_size))
                       for shard in list_shards(cfg.input, folder)]
    return jobs


def run_shard_tasks(jobs: list[ShardJob]) -> list[dict]:
    """One Ray task per shard; progress reported as tasks finish."""
    remote = ray.remote(num_cpus=1)(encode_shard)
    pending = [remote.remote(job) for job in jobs]
    results = []
    with tqdm(total=len(pending), desc="encode", unit="shard") as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            results.extend(ray.get(done))
            bar.update(len(done))
    return results


def merge_group(partial_dirs: list[Path], column: str, value: str, prefix: Path, dtype) -> None:
    """Concatenate one group's per-shard datasets in shard order into prefix.bin/.idx, atomically."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp_bin, tmp_idx = Path(f"{prefix}.bin.tmp"), Path(f"{prefix}.idx.tmp")
    builder = IndexedDatasetBuilder(str(tmp_bin), dtype=dtype)
    # add_index() runs gc.collect() per partial; freezing the (large, torch-laden) heap first keeps
    # that from dominating the merge.  The reader's per-file INFO lines are silenced likewise.
    gc.freeze()
    reader_log = logging.getLogger("megatron.core.datasets.indexed_dataset")
    level = reader_log.level
    reader_log.setLevel(logging.WARNING)
    try:
        for partial in partial_dirs:
            if (partial / column / f"{value}.idx").is_file():
                builder.add_index(str(partial / column / value))
        builder.finalize(str(tmp_idx))
    finally:
        reader_log.setLevel(level)
        gc.unfreeze()
    os.replace(tmp_bin, f"{prefix}.bin")
    os.replace(tmp_idx, f"{prefix}.idx")


def merged_totals(partial_dirs: list[Path], column: str) -> dict[str, dict[str, int]]:
    totals: dict[str, dict[str, int]] = {}
    for partial in partial_dirs:
        for value, entry in read_done(partial)["groups"][column].items():
            total = totals.setdefault(value, {"tokens": 0, "documents": 0, "bytes": 0})
            for key in total:
                total[key] += entry[key]
    return dict(sorted(totals.items()))


def encode_corpus(cfg) -> dict:
    """Encode all shards (resuming finished ones), merge, and write indexed/manifest.json.

    Returns the manifest, or {"complete": False, ...} when encode.max_shards stopped early.
    """
    out_dir = Path(cfg.output).resolve()
    model_path = out_dir / "tokenizer.model"
    if not model_path.is_file():
        raise FileNotFoundError(f"output: {model_path} not found; run the train step first (steps=[train,...])")
    mixture = read_mixture(cfg.input)
    indexed = out_dir / "indexed"
    jobs = plan_jobs(cfg, model_path, indexed / "partials")
    todo = [job for split in SPLITS for job in jobs[split] if not is_done(job.out_dir)]
    limit = cfg.tokenizer.encode.max_shards
    selected = todo if limit is None else todo[: int(limit)]
    if selected:
        ensure_ray(cfg)
        run_shard_tasks(selected)
    skipped = sum(len(jobs[split]) for split in SPLITS) - len(todo)
    if len(selected) < len(todo):
        return {"complete": False, "encoded_shards": len(selected), "remaining_shards": len(todo) - len(selected),
                "skipped_shards": skipped}

    processor = spm.SentencePieceProcessor(model_file=str(model_path))
    dtype = DType.optimal_dtype(processor.get_piece_size())
    manifest = {
        "tokenizer_model": str(model_path), "vocab_size": processor.get_piece_size(),
        "eod_id": processor.eos_id(), "pad_id": processor.pad_id(), "bos_id": processor.bos_id(),
        "dtype": dtype.__name__, "train": {}, "heldout": {"by_source": {}, "by_lang": {}},
    }
    train_dirs = [Path(job.out_dir) for job in jobs["train"]]
    for source, totals in merged_totals(train_dirs, "source").items():
        if source not in mixture:
            raise DataDirError(f"input: training source {source!r} has no weight in {cfg.input}/mixture.json")
        prefix = indexed / "train" / source
        merge_group(train_dirs, "source", source, prefix, dtype)
        manifest["train"][source] = {"prefix": str(prefix), **totals, "weight": float(mixture[source]["weight"])}
    heldout_dirs = [Path(job.out_dir) for job in jobs["heldout"]]
    for column, key in (("source", "by_source"), ("lang", "by_lang")):
        for value, totals in merged_totals(heldout_dirs, column).items():
            prefix = indexed / "heldout" / key / value
            merge_group(heldout_dirs, column, value, prefix, dtype)
            manifest["heldout"][key][value] = {"prefix": str(prefix), **totals}
    temporary = indexed / "manifest.json.tmp"
    temporary.write_text(json.dumps(manifest, indent=2, sort_keys=False))
    os.replace(temporary, indexed / "manifest.json")
    if not cfg.tokenizer.encode.keep_partials:
        shutil.rmtree(indexed / "partials")
    return manifest | {"complete": True, "encoded_shards": len(selected), "skipped_shards": skipped}
