"""The ARPA estimator against a direct Kneser-Ney computation, the perplexity helpers, the stage's config."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from data_pipeline.errors import ConfigError
from data_pipeline.perplexity import bucket, load_lm, percentile_cutoffs, perplexity
from data_pipeline.stages.perplexity import Perplexity
from data_pipeline.tools.arpa import build_arpa

from .model_corpus import real_docs, scramble

TOY = ["the cat sat on the mat", "the dog sat on the log", "a cat saw the dog", "the dog saw a cat on the mat",
       "a dog sat", "the cat"]


def direct_kn(corpus: list[list[str]], order: int):
    """Interpolated Kneser-Ney straight from the definition, for one n-gram at a time (no ARPA involved)."""
    seqs = [["<s>", *s, "</s>"] for s in corpus]
    counts = Counter(tuple(s[i:i + n]) for s in seqs for n in range(1, order + 1) for i in range(len(s) - n + 1))
    grams = {n: [g for g in counts if len(g) == n] for n in range(1, order + 1)}

    def adjusted(g):
        if len(g) == order or g[0] == "<s>":
            return counts[g]
        return sum(1 for x in grams[len(g) + 1] if x[1:] == g)

    adj = {n: {g: adjusted(g) for g in grams[n] if g != ("<s>",)} for n in grams}
    disc = {}
    for n, table in adj.items():
        n1, n2 = sum(a == 1 for a in table.values()), sum(a == 2 for a in table.values())
        disc[n] = n1 / (n1 + 2 * n2) if n1 and n2 else 0.5
    vocab = {g[0] for g in adj[1]} | {"<unk>"}

    def prob(w, h):
        n = len(h) + 1
        followers = [g for g in adj[n] if g[:-1] == h]
        total = sum(adj[n][g] for g in followers)
        lower = 1 / len(vocab) if n == 1 else prob(w, h[1:])
        if not total:  # a context never seen: the lower order alone (what an ARPA reader does)
            return lower
        return max(adj[n].get(h + (w,), 0) - disc[n], 0) / total + disc[n] * len(followers) / total * lower

    def sentence_log10(words):
        seq = ["<s>", *(w if w in vocab else "<unk>" for w in words), "</s>"]
        return sum(math.log10(prob(seq[i], tuple(seq[max(0, i - order + 1):i]))) for i in range(1, len(seq)))

    return sentence_log10


def test_kenlm_reads_the_arpa_and_agrees_with_a_direct_computation(tmp_path):
    import kenlm

    corpus = [s.split() for s in TOY]
    build_arpa(corpus, tmp_path / "toy.arpa", order=3)
    model, direct = kenlm.Model(str(tmp_path / "toy.arpa")), direct_kn(corpus, 3)
    assert model.order == 3
    for sentence in ["the cat sat on the mat", "a dog saw the cat", "the mat sat", "the zebra sat on a dog", "cat"]:
        assert model.score(sentence, bos=True, eos=True) == pytest.approx(direct(sentence.split()), abs=1e-4), sentence


def test_a_pruned_gzipped_model_still_sums_to_one_over_the_vocabulary(tmp_path):
    """Back-off weights computed over the kept n-grams keep each context's distribution normalised."""
    import kenlm

    corpus = [s.split() for s in TOY * 2 + ["the bird sat on a log", "a bird saw the cat"]]
    path = tmp_path / "toy.arpa.gz"
    build_arpa(corpus, path, order=3, min_count=3)
    model = load_lm(str(path))
    vocab = sorted({w for s in corpus for w in s} | {"</s>"})
    for context in [("the", "cat"), ("on", "the"), ("bird",), ("<s>",), ("log", "a")]:
        state = kenlm.State()
        model.NullContextWrite(state) if context[0] != "<s>" else model.BeginSentenceWrite(state)
        for word in context[1:] if context[0] == "<s>" else context:
            out = kenlm.State()
            model.BaseScore(state, word, out)
            state = out
        total = sum(10 ** model.BaseScore(state, w, kenlm.State()) for w in vocab + ["<unk>"])
        assert total == pytest.approx(1.0, abs=1e-4), context


def test_the_same_corpus_gives_byte_identical_models(tmp_path):
    corpus = [s.split() for s in TOY]
    build_arpa(corpus, tmp_path / "a.arpa.gz", order=3)
    build_arpa(corpus, tmp_path / "b.arpa.gz", order=3)
    assert (tmp_path / "a.arpa.gz").read_bytes() == (tmp_path / "b.arpa.gz").read_bytes()


def test_document_perplexity_is_ccnet_s_per_line_formula(tmp_path):
    build_arpa([s.split() for s in TOY], tmp_path / "toy.arpa", order=3)
    model = load_lm(str(tmp_path / "toy.arpa"))
    log10 = model.score("the cat sat", bos=True, eos=True) + model.score("a dog", bos=True, eos=True)
    assert perplexity(model, "The Cat sat\n\n  a DOG  ") == pytest.approx(10 ** (-log10 / (3 + 1 + 2 + 1)), rel=1e-6)
    assert perplexity(model, " \n\n") is None


def test_buckets_and_percentile_cutoffs():
    assert percentile_cutoffs(list(map(float, range(1, 101)))) == [pytest.approx(33.97, abs=0.1),
                                                                   pytest.approx(67.03, abs=0.1)]
    assert [bucket(v, [10.0, 20.0]) for v in (5, 10, 15, 20, 99)] == ["head", "middle", "middle", "tail", "tail"]
    with pytest.raises(ValueError):
        percentile_cutoffs([1.0, 2.0])


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_shipped_models_find_real_text_more_likely_than_its_scrambled_copy(lang):
    stage = Perplexity({"langs": {lang: {"model": f"data/models/lm_{lang}.arpa.gz", "cutoffs": [1, 2]}}})
    docs = real_docs(lang, 20)
    real = [perplexity(stage.models[lang], d) for d in docs]
    scrambled = [perplexity(stage.models[lang], scramble(d, i)) for i, d in enumerate(docs)]
    assert sum(r < s for r, s in zip(real, scrambled)) == len(docs)
    assert sorted(real)[len(real) // 2] * 5 < sorted(scrambled)[len(scrambled) // 2]


@pytest.mark.parametrize("block, key", [
    ({"langs": {"zh": {"model": "data/models/nope.arpa", "cutoffs": [1, 2]}}}, "perplexity.langs.zh.model"),
    ({"langs": {"zh": {"cutoffs": [1, 2]}}}, "perplexity.langs.zh.model"),
    ({"langs": {"zh": {"model": "data/models/lm_zh.arpa.gz", "cutoffs": [5, 2]}}}, "perplexity.langs.zh.cutoffs"),
    ({"langs": {"zh": {"model": "data/models/lm_zh.arpa.gz"}}}, "perplexity.langs.zh.cutoffs"),
    ({"langs": {"zh": {"model": "data/models/lm_zh.arpa.gz", "cutoffs": [1, 2], "max_perplexity": "x"}}},
     "perplexity.langs.zh.max_perplexity"),
    ({"langs": {}}, "perplexity.langs"),
    ({"langs": {"zh": {"model": "data/models/lm_zh.arpa.gz", "cutoffs": [1, 2]}}, "max_chars": 0},
     "perplexity.max_chars"),
])
def test_bad_config_names_the_key(block, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        Perplexity.check(block)


def test_validate_reports_a_missing_model_before_any_work(tmp_path):
    from data_pipeline.config import validate

    from .conftest import load_config

    cfg = load_config(input=str(tmp_path), output=str(tmp_path / "out"),
                      **{"perplexity.langs.en.model": str(tmp_path / "missing.arpa")})
    with pytest.raises(ConfigError, match="'perplexity.langs.en.model'"):
        validate(cfg)


def test_build_lm_cli_writes_a_model_and_prints_reference_cutoffs(tmp_path, capsys):
    import json

    from data_pipeline.tools.build_lm import main

    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": f"{s}\n{s}"}) + "\n" for s in TOY * 3))
    main(["--input", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "lm.arpa.gz"),
          "--reference", str(tmp_path / "in.jsonl")])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    low, high = result["cutoffs"]
    assert result["ngrams"]["3-grams"] > 0 and 1.0 < low <= high
    assert load_lm(str(tmp_path / "lm.arpa.gz")).order == 3
