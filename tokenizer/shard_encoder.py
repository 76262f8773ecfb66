"""Encode one parquet shard into per-group Megatron indexed datasets (one Ray task's work).

Each shard is written under a temporary directory and renamed into place only when
complete, with a DONE marker holding its statistics, so a crash never leaves a
half-written shard that a rerun would trust.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

from tokenizer.data_source import check_name, iter_batches
from tokenizer.indexed_writer import ShardIndexedWriter, token_dtype

DONE_MARKER = "DONE.json"


@dataclass(frozen=True)
class ShardJob:
    shard: str            # parquet file
    out_dir: str          # final per-shard directory (partials/<split>/<shard stem>)
    group_by: tuple[str, ...]   # columns whose values name the output files, e.g. ("source",) or ("source", "lang")
    model_path: str
    batch_size: int


def is_done(out_dir: str | Path) -> bool:
    return (Path(out_dir) / DONE_MARKER).is_file()


def read_done(out_dir: str | Path) -> dict:
    return json.loads((Path(out_dir) / DONE_MARKER).read_text())


def encode_shard(job: ShardJob) -> dict:
    """Encode every document, append EOD, write <column>/<value>.bin/.idx; return the statistics.

    Already-finished shards are returned from their marker, which is what makes reruns resume.
    """
    final = Path(job.out_dir)
    if is_done(final):
        return read_done(final) | {"skipped": True}
    processor = spm.SentencePieceProcessor(model_file=job.model_path)
    eod = processor.eos_id()
    dtype = token_dtype(processor.get_piece_size())
    temporary = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex}")
    temporary.mkdir(parents=True)
    builders: dict[tuple[str, str], ShardIndexedWriter] = {}
    stats: dict[str, dict[str, dict[str, int]]] = {column: {} for column in job.group_by}
    columns = tuple(dict.fromkeys(("text",) + job.group_by))
    for batch in iter_batches(Path(job.shard), columns, job.batch_size):
        encoded = processor.encode(batch["text"])
        for row, ids in enumerate(encoded):
            text = batch["text"][row]
            document = ids + [eod]
            for column in job.group_by:
                value = check_name(batch[column][row], f"input: {job.shard} {column}")
                key = (column, value)
                if key not in builders:
                    (temporary / column).mkdir(exist_ok=True)
                    builders[key] = ShardIndexedWriter(temporary / column / f"{value}.bin", dtype)
                builders[key].add_document(document)
                entry = stats[column].setdefault(value, {"tokens": 0, "documents": 0, "bytes": 0})
                entry["tokens"] += len(ids) + 1
                entry["documents"] += 1
                entry["bytes"] += len(text.encode("utf-8"))
    for (column, value), builder in builders.items():
        builder.finalize(str(temporary / column / f"{value}.idx"))
    result = {"shard": job.shard, "groups": stats}
    (temporary / DONE_MARKER).write_text(json.dumps(result, indent=1, sort_keys=True))
    if final.exists():  # a finished-but-unmarked leftover can only be from an older crash
        shutil.rmtree(final)
    os.rename(temporary, final)
    return result | {"skipped": False}
