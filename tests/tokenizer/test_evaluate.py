"""Held-out evaluation: per-language tokens per byte and fertility against real references."""

from __future__ import annotations

import json

import pytest

from tokenizer.evaluate import evaluate_tokenizer


@pytest.fixture(scope="module")
def results(trained):
    return evaluate_tokenizer(trained[0])


def test_counts_are_exact_for_our_tokenizer_and_the_baselines(results, sp, helpers, data_dir, trained):
    docs = helpers.documents(data_dir, "heldout")
    budget = trained[0].tokenizer.evaluate.max_bytes_per_lang
    for lang, row in results["languages"].items():
        texts, seen = [], 0
        for doc in docs:  # the evaluator's rule: read documents until the language's byte budget is spent
            if doc["lang"] == lang and seen < budget and doc["text"]:
                texts.append(doc["text"])
                seen += len(doc["text"].encode())
        assert row["bytes"] == seen and row["documents"] == len(texts)
        assert row["tokens"]["ours"] == sum(len(ids) for ids in sp.encode(texts))
        assert row["tokens_per_byte"]["utf8_bytes"] == 1.0
        assert row["tokens"]["characters"] == sum(len(t) for t in texts)
        unit = "character" if lang in ("zh", "ja") else "word"
        assert row["fertility_unit"] == unit
        units = sum(len(t.split()) if unit == "word" else sum(not c.isspace() for c in t) for t in texts)
        assert row["fertility"]["ours"] == pytest.approx(row["tokens"]["ours"] / units)


def test_real_reference_tokenizers_are_measured(results):
    assert {"mistral_v1", "mistral_tekken"} <= set(results["tokenizers"])
    for row in results["languages"].values():
        for name in ("ours", "mistral_v1", "mistral_tekken"):
            # any real subword tokenizer compresses far below one token per byte
            assert 0.1 < row["tokens_per_byte"][name] < 0.7
    # A 32k-vocab model with Latin-centric merges needs more tokens per byte on Chinese than on English.
    assert results["languages"]["zh"]["tokens_per_byte"]["mistral_v1"] > \
        results["languages"]["en"]["tokens_per_byte"]["mistral_v1"]


def test_report_files(results, trained):
    eval_dir = trained[1] / "eval"
    assert json.loads((eval_dir / "eval.json").read_text()) == json.loads(json.dumps(results))
    table = (eval_dir / "eval.md").read_text()
    for lang, row in results["languages"].items():
        assert f"| {lang} | {row['bytes']} | {row['tokens_per_byte']['ours']:.3f}" in table
    png = (eval_dir / "eval.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
