"""Final pass: drop duplicates, carve the held-out split, write shards, tally every row.

One Ray task per stage-1 part file. Each writes ``shards/part-NNNNN.parquet``
and ``heldout/part-NNNNN.parquet`` under a name fixed by the part's position
in the sorted list of stage-1 files, so a rerun overwrites instead of adding,
and returns the counts (with a few examples) the report is built from. The
tallies travel back to the driver; the texts never do.
"""

from __future__ import annotations

import os
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_pipeline.clean import EXAMPLE_CHARS
from data_pipeline.split import heldout_mask
from data_pipeline.stages.pii import PII_KINDS

INTERNAL_COLUMNS = ("file_key", "status", "stage", "reason", "file", "line", "error", "exact_hash", "bands", "signature")
MAX_EXAMPLES = 3


def _write_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def _new_tally() -> dict:
    return {"input": 0, "kept": 0, "heldout": 0, "quarantined": 0,
            "dropped": defaultdict(lambda: {"count": 0, "examples": []}),
            "kept_by": defaultdict(lambda: {"documents": 0, "bytes": 0, "langs": defaultdict(int)}),
            "heldout_by": defaultdict(lambda: {"documents": 0, "bytes": 0, "langs": defaultdict(int)}),
            "kept_by_script": defaultdict(int), "pii": defaultdict(int), "quarantine": [],
            # documents kept after decontamination cut spans out of them, by benchmark: {documents, spans}
            "decontaminated": defaultdict(lambda: {"documents": 0, "spans": 0})}


def _add_drop(tally: dict, stage: str, reason: str, doc_id: str, text: str) -> None:
    entry = tally["dropped"][f"{stage}/{reason}"]
    entry["count"] += 1
    if len(entry["examples"]) < MAX_EXAMPLES:
        entry["examples"].append({"id": doc_id, "text": (text or "")[:EXAMPLE_CHARS]})


def _add_kept(by: dict, rows: pa.Table) -> None:
    for source, lang, nbytes in zip(rows.column("source").to_pylist(), rows.column("lang").to_pylist(),
                                    rows.column("n_bytes").to_pylist()):
        entry = by[source]
        entry["documents"] += 1
        entry["bytes"] += int(nbytes)
        entry["langs"][lang] += 1


def write_part(index: int, path: str, out_dir: str, removals_dir: str, num_partitions: int, heldout_cfg: dict) -> dict:
    """Ray task body for one stage-1 part file; returns a plain-dict tally.

    Dedup's decisions are read from its removal file (data_pipeline/removal_set.py): the rows of this
    part that dedup removes, with their reason, and the cluster size of the ones it keeps, written to
    the shards as ``dup_cluster_size`` (1 for a document with no duplicate), as FineWeb-2 does for
    rehydration. The held-out split hashes the input id, not the doc_id: it stays the same when the
    corpus is moved or more files are added (a doc_id holds the file's position in the sorted input list).
    """
    from data_pipeline.removal_set import read_removals

    table = pq.read_table(path)
    tally = _new_tally()
    tally["input"] = len(table)
    status = table.column("status")
    for row in table.filter(pc.not_equal(status, "kept")).select(["id", "status", "stage", "reason", "text", "file",
                                                                  "line", "error"]).to_pylist():
        if row["status"] == "quarantined":
            tally["quarantined"] += 1
            tally["quarantine"].append({"file": row["file"], "line": row["line"], "stage": row["stage"] or "read",
                                        "error": row["error"], "raw": row["text"]})
        else:
            _add_drop(tally, row["stage"], row["reason"], row["id"], row["text"])
    kept_rows = np.flatnonzero(pc.equal(status, "kept").to_numpy(zero_copy_only=False))
    kept = table.take(pa.array(kept_rows))
    removals = read_removals(removals_dir, index, num_partitions)
    removal_rows = removals.column("row").to_numpy()
    at = np.searchsorted(removal_rows, kept_rows)  # removal rows are sorted; every one is a kept row
    found = at < len(removal_rows)
    found[found] = removal_rows[at[found]] == kept_rows[found]
    reasons = np.full(len(kept_rows), None, dtype=object)
    sizes = np.ones(len(kept_rows), dtype=np.int64)
    reasons[found] = np.asarray(removals.column("reason").to_pylist(), dtype=object)[at[found]]
    sizes[found] = removals.column("dup_cluster_size").to_numpy()[at[found]]
    is_dup = reasons != None  # noqa: E711 (elementwise)
    if is_dup.any():
        texts, ids = kept.column("text").to_pylist(), kept.column("id").to_pylist()
        for i in np.flatnonzero(is_dup):
            _add_drop(tally, "dedup", reasons[i], ids[i], texts[i])
    kept = kept.append_column("dup_cluster_size", pa.array(sizes)).filter(pa.array(~is_dup))
    kept = kept.drop_columns([c for c in INTERNAL_COLUMNS if c in kept.column_names])
    held = heldout_mask(kept.column("id").to_pylist(), float(heldout_cfg["fraction"]), int(heldout_cfg["seed"]))
    train, heldout = kept.filter(pa.array(~held)), kept.filter(pa.array(held))
    name = f"part-{index:05d}.parquet"
    for split, rows in (("shards", train), ("heldout", heldout)):
        if len(rows):
            _write_atomic(rows, Path(out_dir) / split / name)
    tally["kept"], tally["heldout"] = len(train), len(heldout)
    _add_kept(tally["kept_by"], train)
    _add_kept(tally["heldout_by"], heldout)
    if "zh_script" in train.column_names:  # hans/hant of kept Chinese documents
        for script in train.column("zh_script").to_pylist():
            if script:
                tally["kept_by_script"][script] += 1
    if "decontaminated_from" in kept.column_names:  # training and held-out alike: what the cut changed
        for bench, spans in zip(kept.column("decontaminated_from").to_pylist(),
                                kept.column("decontaminated_spans").to_pylist()):
            if bench:
                tally["decontaminated"][bench]["documents"] += 1
                tally["decontaminated"][bench]["spans"] += int(spans or 0)
    for kind in PII_KINDS:
        tally["pii"][kind] += int(pc.sum(kept.column(f"pii_{kind}")).as_py() or 0)
    return _plain(tally)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


def merge_tallies(tallies: list[dict]) -> dict:
    """Sum per-part tallies; examples keep the first few in part order (deterministic)."""
    total = _new_tally()
    for t in tallies:
        for key in ("input", "kept", "heldout", "quarantined"):
            total[key] += t[key]
        for reason, entry in t["dropped"].items():
            into = total["dropped"][reason]
            into["count"] += entry["count"]
            into["examples"].extend(entry["examples"][:MAX_EXAMPLES - len(into["examples"])])
        for by in ("kept_by", "heldout_by"):
            for source, entry in t[by].items():
                into = total[by][source]
                into["documents"] += entry["documents"]
                into["bytes"] += entry["bytes"]
                for lang, n in entry["langs"].items():
                    into["langs"][lang] += n
        for kind, n in t["pii"].items():
            total["pii"][kind] += n
        for script, n in t.get("kept_by_script", {}).items():
            total["kept_by_script"][script] += n
        for bench, entry in t.get("decontaminated", {}).items():
            total["decontaminated"][bench]["documents"] += entry["documents"]
            total["decontaminated"][bench]["spans"] += entry["spans"]
        total["quarantine"].extend(t["quarantine"])
    return _plain(total)
