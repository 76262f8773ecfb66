"""Fixtures for the tokenizer stage: a small DATA_DIR in the data stage's format built from
the embedded corpus, one tiny trained tokenizer and one encoded corpus shared by the tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from tokenizer.data_source import iter_batches, list_shards
from tokenizer.demo_data import write_data_dir

REPO = Path(__file__).resolve().parents[2]
TEST_VOCAB = 3000  # small, but above 256 bytes + specials + the characters kept by character_coverage


def make_config(data_dir: Path, out_dir: Path, *overrides: str):
    """The real Hydra config (configs/tokenizer.yaml + tokenizer/demo.yaml) with test-sized overrides."""
    with initialize_config_dir(version_base=None, config_dir=str(REPO / "configs")):
        return compose("tokenizer", overrides=[
            f"input={data_dir}", f"output={out_dir}", f"tokenizer.vocab_size={TEST_VOCAB}",
            "tokenizer.sample.bytes=400000", "tokenizer.evaluate.max_bytes_per_lang=60000",
            "tokenizer.training.num_threads=1", "tokenizer.training.character_coverage=0.995",
            "tokenizer.encode.batch_size=64", *overrides])


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """60 documents per source (en, zh, de/fr/es/ja, classical zh), 4 training shards, 2 held-out."""
    return write_data_dir(tmp_path_factory.mktemp("data"), docs_per_source=60, num_shards=4)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, data_dir):
    """A tokenizer trained once for the session: (cfg, out_dir), with hf/ exported."""
    from tokenizer.hf_export import save_hf_tokenizer
    from tokenizer.train import train_tokenizer

    out_dir = tmp_path_factory.mktemp("tok")
    cfg = make_config(data_dir, out_dir)
    model = train_tokenizer(cfg)
    save_hf_tokenizer(model, out_dir / "hf")
    return cfg, out_dir


@pytest.fixture(scope="session")
def sp(trained):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(trained[1] / "tokenizer.model"))


@pytest.fixture(scope="session")
def encoded(trained, ray_cluster):
    """The corpus encoded once with the session tokenizer: (cfg, out_dir, manifest)."""
    from tokenizer.encode import encode_corpus

    cfg, out_dir = trained
    manifest = encode_corpus(cfg)
    assert manifest["complete"]
    return cfg, out_dir, manifest


def documents(data_dir: Path, split: str) -> list[dict]:
    """All records of a split in shard order (what the encoder sees)."""
    rows = []
    for shard in list_shards(data_dir, split):
        for batch in iter_batches(shard, ("id", "text", "lang", "source"), 1000):
            rows += [dict(zip(batch, values)) for values in zip(*batch.values())]
    return rows


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Relative path -> content of every .bin/.idx under root (for byte-identity checks)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.suffix in (".bin", ".idx") and "partials" not in p.parts}


@pytest.fixture(scope="session")
def helpers():
    """The module-level helpers, for tests (conftest modules are not importable under importlib mode)."""
    from types import SimpleNamespace

    return SimpleNamespace(make_config=make_config, documents=documents, tree_bytes=tree_bytes)


os.environ.setdefault("OMP_NUM_THREADS", "1")
