"""The fastText quality classifier: training separates held-out text, the stages in the real Ray pipeline."""

from __future__ import annotations

import json

import pytest

from data_pipeline.errors import ConfigError
from data_pipeline.model_text import classifier_line
from data_pipeline.quality_model import load_classifier, score, train
from data_pipeline.stages.quality_model import QualityModel

from .conftest import load_config, output_rows
from .model_corpus import real_docs, scramble


def auc(pos: list[float], neg: list[float]) -> float:
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def test_chinese_is_split_into_characters_and_english_lowercased():
    assert classifier_line("软件包管理，Debian 2024!") == "软 件 包 管 理 , debian 0000 !"


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_a_classifier_trained_on_toy_data_separates_held_out_documents(lang, tmp_path):
    """Trained on 60 documents and copies with the tokens of each line shuffled (punctuation too, so only
    word order tells them apart); tested on 30 other documents and their copies."""
    docs = real_docs(lang, 90)
    train_docs, held = docs[:60], docs[60:]
    path = str(tmp_path / "q.ftz")
    counts = train(train_docs, [scramble(d, i, punct=True) for i, d in enumerate(train_docs)], path)
    assert counts == {"positives": 60, "negatives": 60}
    load_classifier.cache_clear()
    model = load_classifier(path)
    pos = [score(model, d) for d in held]
    neg = [score(model, scramble(d, 1000 + i, punct=True)) for i, d in enumerate(held)]
    assert auc(pos, neg) >= 0.9, auc(pos, neg)  # chance is 0.5
    assert sum(pos) / len(pos) - sum(neg) / len(neg) >= 0.15  # measured: en 0.6, zh 0.26
    assert all(0.0 <= s <= 1.0 for s in pos + neg)


def test_training_is_reproducible(tmp_path):
    docs = real_docs("en", 20)
    negatives = [scramble(d) for d in docs]
    train(docs, negatives, str(tmp_path / "a.ftz"))
    train(docs, negatives, str(tmp_path / "b.ftz"))
    assert (tmp_path / "a.ftz").read_bytes() == (tmp_path / "b.ftz").read_bytes()


def test_cli_trains_from_jsonl(tmp_path):
    from data_pipeline.tools.train_quality_classifier import main

    docs = real_docs("zh", 20)
    for name, texts in (("pos", docs), ("neg", [scramble(d) for d in docs])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n"
                                                        for t in texts), encoding="utf-8")
    out = tmp_path / "q.bin"
    main(["--positive", str(tmp_path / "pos.jsonl"), "--negative", str(tmp_path / "neg.jsonl"), "--out", str(out),
          "--no-quantize", "--epoch", "5"])
    assert 0.0 <= score(load_classifier(str(out)), docs[0]) <= 1.0


@pytest.mark.parametrize("block, key", [
    ({"langs": {"en": {"model": "data/models/missing.ftz"}}}, "quality_model.langs.en.model"),
    ({"langs": {"en": {"min_score": 0.1}}}, "quality_model.langs.en.model"),
    ({"langs": {"en": {"model": "data/models/quality_en.ftz", "min_score": 1.5}}}, "quality_model.langs.en.min_score"),
    ({"langs": None}, "quality_model.langs"),
])
def test_bad_config_names_the_key(block, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        QualityModel.check(block)


def test_model_stages_in_the_ray_pipeline(ray_cluster, tmp_path):
    """One real run: kept en/zh rows carry both scores and a bucket, scrambled documents are dropped and
    counted under the stage that dropped them, exactly as the stages decide without Ray."""
    from data_pipeline.clean import clean_records
    from data_pipeline.config import plain
    from data_pipeline.pipeline import run

    real = {f"{lang}{i}": t for lang in ("en", "zh") for i, t in enumerate(real_docs(lang, 6))}
    bad = {f"bad_en{i}": scramble(t, i, whole=True) for i, t in enumerate(real_docs("en", 4, skip=40))}
    bad |= {f"bad_zh{i}": scramble(t, i, whole=True) for i, t in enumerate(real_docs("zh", 4, skip=40))}
    docs = real | bad
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "mix.jsonl").write_text("".join(json.dumps({"id": k, "text": t}, ensure_ascii=False) + "\n"
                                                       for k, t in docs.items()), encoding="utf-8")
    # en: the classifier drops; zh: the classifier only scores and the perplexity ceiling drops (measured:
    # these real zh documents 10-17, the scrambled ones 480-8300; en scores 1.0 against 0.003-0.035)
    overrides = {"quality_model.langs.en.min_score": 0.3, "quality_model.langs.zh.min_score": None,
                 "perplexity.langs.zh.max_perplexity": 300, "heldout.fraction": 0.0, "dedup.fuzzy": False}
    cfg = load_config(input=str(tmp_path / "in"), output=str(tmp_path / "out"), **overrides)
    run(cfg)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    kept = {r["id"]: r for r in output_rows(tmp_path / "out", "shards")}
    assert set(kept) == set(real)
    for row in kept.values():
        assert 0.0 <= row["fasttext_quality"] <= 1.0 and row["perplexity"] > 1.0
        assert row["perplexity_bucket"] in ("head", "middle", "tail")
    assert report["dropped"]["quality_model"]["low_quality_score"]["count"] == 4
    assert report["dropped"]["perplexity"]["high_perplexity"]["count"] == 4

    rows = clean_records([{"kind": "record", "id": k, "text": t, "line": i + 1, "source": "mix", "lang_hint": None,
                           "file": "mix.jsonl", "file_key": "0-mix", "error": None, "raw": None}
                          for i, (k, t) in enumerate(docs.items())], plain(cfg)).to_pylist()
    assert {r["id"]: (r["stage"], r["reason"]) for r in rows if r["status"] == "dropped"} == {
        **{k: ("quality_model", "low_quality_score") for k in bad if k.startswith("bad_en")},
        **{k: ("perplexity", "high_perplexity") for k in bad if k.startswith("bad_zh")}}
    by_id = {r["id"]: r for r in rows}
    for k, row in kept.items():
        assert row["fasttext_quality"] == pytest.approx(by_id[k]["fasttext_quality"])
        assert row["perplexity_bucket"] == by_id[k]["perplexity_bucket"]
