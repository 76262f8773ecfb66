"""Fixtures for the data pipeline tests: the config, small corpora, one full run on the demo corpus."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[2]
CORPUS = REPO_ROOT / "data" / "corpus"


def load_config(**overrides) -> DictConfig:
    """configs/data_pipeline.yaml without Hydra's own block, plus dotted overrides."""
    cfg = OmegaConf.load(REPO_ROOT / "configs" / "data_pipeline.yaml")
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])
    cfg.ray.progress = False
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def read_corpus(name: str) -> list[dict]:
    """Parseable records of one embedded corpus file (malformed lines skipped)."""
    out = []
    with gzip.open(CORPUS / f"{name}.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec.get("text"), str):
                out.append(rec)
    return out


def planted() -> dict[str, dict]:
    with open(CORPUS / "planted.jsonl", encoding="utf-8") as fh:
        return {row["id"]: row for row in map(json.loads, fh)}


def output_rows(out: Path, split: str) -> list[dict]:
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for path in sorted((out / split).glob("part-*.parquet")):
        rows.extend(pq.read_table(path).to_pylist())
    return rows


def write_small_corpus(root: Path, per_file: int = 25) -> list[dict]:
    """A few real docs per language plus an exact duplicate and a short page, in three files; returns all records."""
    root.mkdir(parents=True, exist_ok=True)
    en = read_corpus("en_docs")[:per_file]
    zh = read_corpus("zh_docs")[:per_file]
    poems = read_corpus("zh_classical")[:per_file]
    en_extra = [{"id": "en_zz_dup", "text": "  " + en[0]["text"] + "\n\n"},
                {"id": "en_zz_short", "text": "Click here."}]
    files = {"en_small.jsonl.gz": en + en_extra, "zh_small.jsonl": zh, "poems.jsonl": poems}
    records = []
    for name, recs in files.items():
        payload = "".join(json.dumps({"id": r["id"], "text": r["text"]}, ensure_ascii=False) + "\n" for r in recs)
        path = root / name
        if name.endswith(".gz"):
            path.write_bytes(gzip.compress(payload.encode("utf-8"), mtime=0))
        else:
            path.write_text(payload, encoding="utf-8")
        records.extend(recs)
    return records


@pytest.fixture(scope="session")
def corpus_run(ray_cluster, tmp_path_factory):
    """One pipeline run over the whole embedded demo corpus, shared by the scoring tests."""
    from data_pipeline.pipeline import run

    out = tmp_path_factory.mktemp("dp_corpus")
    cfg = load_config(input=str(CORPUS / "*.jsonl.gz"), output=str(out))
    summary = run(cfg)
    return out, summary
