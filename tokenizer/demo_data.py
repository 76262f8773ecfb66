"""Build a DATA_DIR in the data stage's format from the embedded demo corpus.

The tokenizer stage must run (tests, benchmarks, demos) before or without the data
stage's real output, so this writes the same contract: shards/ and heldout/ parquet with
id, text, lang, source, and mixture.json, from data/corpus/*.jsonl.gz.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"
DEMO_WEIGHTS = {"en_docs": 0.45, "zh_docs": 0.2, "multilingual_docs": 0.25, "zh_classical": 0.1}


def read_corpus(source: str, limit: int | None = None) -> list[dict]:
    """Records of one embedded source; lines that do not parse are skipped (the corpus has a few).

    With a limit, records are taken evenly spaced, because the files are grouped by language.
    """
    records = []
    with gzip.open(CORPUS / f"{source}.jsonl.gz", "rt", encoding="utf-8", errors="replace") as lines:
        for line in lines:
            try:
                record = json.loads(line)
                records.append({"id": str(record["id"]), "text": str(record["text"]),
                                "lang": str(record["lang_hint"]), "source": source})
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    if limit is not None and len(records) > limit:
        records = [records[i * len(records) // limit] for i in range(limit)]
    return records


def write_data_dir(data_dir: str | Path, docs_per_source: int | None = None, num_shards: int = 4,
                   heldout_every: int = 10, weights: dict[str, float] | None = None) -> Path:
    """Shards get documents round-robin; every heldout_every-th document goes to heldout/."""
    data_dir = Path(data_dir)
    weights = weights or DEMO_WEIGHTS
    train: list[dict] = []
    heldout: list[dict] = []
    mixture = {}
    for source in weights:
        records = read_corpus(source, docs_per_source)
        kept = [r for i, r in enumerate(records) if i % heldout_every != heldout_every - 1]
        heldout += [r for i, r in enumerate(records) if i % heldout_every == heldout_every - 1]
        train += kept
        mixture[source] = {"weight": weights[source], "documents": len(kept),
                           "bytes": sum(len(r["text"].encode("utf-8")) for r in kept)}
    for split, records, shards in (("shards", train, num_shards), ("heldout", heldout, max(1, num_shards // 2))):
        (data_dir / split).mkdir(parents=True, exist_ok=True)
        for shard in range(shards):
            part = records[shard::shards]
            table = pa.table({key: [r[key] for r in part] for key in ("id", "text", "lang", "source")})
            pq.write_table(table, data_dir / split / f"part-{shard:05d}.parquet")
    (data_dir / "mixture.json").write_text(json.dumps({"sources": mixture}, indent=2))
    return data_dir


if __name__ == "__main__":
    import sys

    print(write_data_dir(sys.argv[1] if len(sys.argv) > 1 else "/tmp/tok_demo_data"))
