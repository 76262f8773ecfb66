"""Encoding to Megatron indexed datasets: content, manifest, determinism, resume after a crash."""

from __future__ import annotations

import json
import os
from pathlib import Path

from megatron.core.datasets.indexed_dataset import IndexedDataset

from tokenizer.encode import encode_corpus


def test_manifest_schema_and_totals(encoded, sp, helpers, data_dir):
    cfg, out_dir, _ = encoded
    manifest = json.loads((out_dir / "indexed" / "manifest.json").read_text())
    assert manifest["tokenizer_model"] == str((out_dir / "tokenizer.model").resolve())
    assert (manifest["vocab_size"], manifest["eod_id"], manifest["pad_id"], manifest["bos_id"]) == (3000, 2, 0, 1)
    assert manifest["dtype"] == "uint16"
    mixture = json.loads((data_dir / "mixture.json").read_text())["sources"]
    assert set(manifest["train"]) == set(mixture)
    train_docs = helpers.documents(data_dir, "shards")
    for source, entry in manifest["train"].items():
        texts = [d["text"] for d in train_docs if d["source"] == source]
        assert set(entry) == {"prefix", "tokens", "documents", "bytes", "weight"}
        assert entry["weight"] == mixture[source]["weight"]
        assert entry["documents"] == len(texts) == mixture[source]["documents"]
        assert entry["bytes"] == sum(len(t.encode()) for t in texts)
        assert entry["tokens"] == sum(len(ids) + 1 for ids in sp.encode(texts))
        assert entry["prefix"] == str(out_dir.resolve() / "indexed" / "train" / source)
    heldout = helpers.documents(data_dir, "heldout")
    assert set(manifest["heldout"]["by_lang"]) == {d["lang"] for d in heldout}
    assert set(manifest["heldout"]["by_source"]) == {d["source"] for d in heldout}
    for key, column in (("by_lang", "lang"), ("by_source", "source")):
        for value, entry in manifest["heldout"][key].items():
            texts = [d["text"] for d in heldout if d[column] == value]
            assert (entry["documents"], entry["bytes"]) == (len(texts), sum(len(t.encode()) for t in texts))
            assert Path(entry["prefix"] + ".bin").is_file() and Path(entry["prefix"] + ".idx").is_file()


def test_megatron_reads_documents_equal_to_encodings_plus_eod(encoded, sp, helpers, data_dir):
    _, _, manifest = encoded
    train_docs = helpers.documents(data_dir, "shards")
    for source, entry in manifest["train"].items():
        dataset = IndexedDataset(entry["prefix"])
        texts = [d["text"] for d in train_docs if d["source"] == source]  # shard order = file order
        assert len(dataset) == len(texts)
        assert dataset.index.dtype.__name__ == "uint16"
        for index, ids in enumerate(sp.encode(texts)):
            assert dataset[index].tolist() == ids + [sp.eos_id()]
    heldout = helpers.documents(data_dir, "heldout")
    for lang, entry in manifest["heldout"]["by_lang"].items():
        dataset = IndexedDataset(entry["prefix"])
        texts = [d["text"] for d in heldout if d["lang"] == lang]
        assert [sp.decode(dataset[i][:-1].tolist()) for i in range(len(dataset))] == texts


def test_same_input_gives_byte_identical_files(encoded, helpers, data_dir, tmp_path):
    cfg, out_dir, _ = encoded
    other = tmp_path / "again"
    other.mkdir()
    os.symlink(out_dir / "tokenizer.model", other / "tokenizer.model")
    again = helpers.make_config(data_dir, other)
    encode_corpus(again)
    first, second = helpers.tree_bytes(out_dir / "indexed"), helpers.tree_bytes(other / "indexed")
    assert len(first) == 2 * (4 + 4 + 6) and first == second


def test_crash_midway_resumes_only_unfinished_shards(encoded, helpers, data_dir, tmp_path):
    _, out_dir, _ = encoded
    run = tmp_path / "resumed"
    run.mkdir()
    os.symlink(out_dir / "tokenizer.model", run / "tokenizer.model")
    interrupted = encode_corpus(helpers.make_config(data_dir, run, "tokenizer.encode.max_shards=2"))
    assert interrupted == {"complete": False, "encoded_shards": 2, "remaining_shards": 4, "skipped_shards": 0}
    assert not (run / "indexed" / "manifest.json").exists()
    partials = run / "indexed" / "partials" / "train"
    finished = {p: p.stat().st_mtime_ns for p in partials.glob("part-*/DONE.json")}
    assert len(finished) == 2
    # What a worker killed mid-shard leaves behind: a temporary directory with a half-written file.
    crashed = partials / ".part-00002.tmp-deadbeef"
    (crashed / "source").mkdir(parents=True)
    (crashed / "source" / "en_docs.bin").write_bytes(b"\x01\x02")

    resumed = encode_corpus(helpers.make_config(data_dir, run))
    assert resumed["complete"] and (resumed["encoded_shards"], resumed["skipped_shards"]) == (4, 2)
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # finished shards not redone
    assert not crashed.exists()
    assert helpers.tree_bytes(run / "indexed") == helpers.tree_bytes(out_dir / "indexed")
    rerun = encode_corpus(helpers.make_config(data_dir, run))
    assert (rerun["encoded_shards"], rerun["skipped_shards"]) == (0, 6)
