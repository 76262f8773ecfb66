"""Language identification with py3langid: labels, scores, allowed list, aliases."""

import pytest

from data_pipeline.config import plain
from data_pipeline.language_id import identify, identify_document, language_verdict

from .conftest import load_config, read_corpus

SAMPLES = {
    "en": "The package manager downloads the archive, verifies its signature and installs the files.",
    "zh": "软件包管理器下载归档文件，验证其签名，然后安装这些文件。这是一个简单的过程。",
    "ja": "パッケージマネージャはアーカイブをダウンロードし、署名を検証してファイルをインストールします。",
    "de": "Der Paketmanager lädt das Archiv herunter, prüft seine Signatur und installiert die Dateien.",
    "fr": "Le gestionnaire de paquets télécharge l'archive, vérifie sa signature et installe les fichiers.",
    "es": "El gestor de paquetes descarga el archivo, verifica su firma e instala los ficheros.",
}


@pytest.mark.parametrize("lang", sorted(SAMPLES))
def test_allowed_languages_are_identified_and_kept(lang):
    cfg = plain(load_config(input="x", output="y")).language
    got, score = identify(SAMPLES[lang], cfg.max_bytes, cfg.aliases)
    assert got == lang
    assert 0.0 <= score <= 1.0
    assert language_verdict(got, score, cfg) is None


def test_russian_is_dropped_with_reason():
    cfg = plain(load_config(input="x", output="y")).language
    got, score = identify("Жизнь слишком короткий промежуток времени для подготовки к вечности.", 1000, cfg.aliases)
    assert got == "ru"
    assert language_verdict(got, score, cfg) == "language_not_allowed"


def test_low_confidence_and_aliases():
    cfg = plain(load_config(input="x", output="y")).language
    assert language_verdict("en", 0.1, cfg) == "language_low_confidence"
    assert identify("x", 10, {"en": "zz", "de": "zz", "la": "zz"})[0] not in {"en", "de", "la"}


def test_only_the_first_max_bytes_of_utf8_are_classified():
    zh = SAMPLES["zh"] * 20  # ~2300 bytes, 3 bytes a character
    en = SAMPLES["en"] * 40
    assert identify(zh + en, 1000)[0] == "zh"  # the English tail is beyond the budget
    assert identify(en + zh, 1000)[0] == "en"
    # a budget that ends inside a 3-byte character drops the partial character instead of failing
    for budget in (1, 2, 4, 5, 1001):
        lang, score = identify(zh, budget)
        assert 0.0 <= score <= 1.0
    assert identify("中" * 10, 3) == identify("中", 1000)


def test_an_untrusted_label_is_retried_on_more_text():
    cfg = plain(load_config(input="x", output="y")).language
    # a real section whose first 1000 bytes are mostly an English config listing
    (text,) = [r["text"] for r in read_corpus("zh_classical") if r["id"] == "zh_classical-00112"]
    short_lang, short_score = identify(text, cfg.max_bytes, cfg.aliases)
    assert short_score < cfg.min_score["default"]  # the opening alone is not trusted
    lang, score = identify_document(text, cfg)
    assert lang == "zh" and score > 0.5
    no_retry = plain({**cfg, "retry_bytes": 0})
    assert identify_document(text, no_retry) == (short_lang, short_score)


def test_the_tokenizer_automaton_is_no_deeper_than_the_vectorised_walk_assumes():
    """langid_walk's six passes are exact only if no state lies deeper than AUTOMATON_DEPTH bytes from the root."""
    import numpy as np

    from data_pipeline.langid_walk import AUTOMATON_DEPTH
    from data_pipeline.language_id import identifier

    nextmove, rowbase, _ = identifier().tables()
    depth = np.full(len(rowbase), -1)
    depth[0], frontier, level = 0, np.array([0]), 0
    while len(frontier):  # breadth-first: in an Aho-Corasick automaton a state's distance is its string's length
        reached = np.unique(nextmove[(rowbase[frontier][:, None] + np.arange(256)[None, :]).ravel()])
        frontier, level = reached[depth[reached] < 0], level + 1
        depth[frontier] = level
    assert (depth >= 0).all() and depth.max() == AUTOMATON_DEPTH


def test_the_vectorised_walk_gives_py3langid_labels_and_scores_bit_for_bit():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    from data_pipeline.language_id import identifier

    reference = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    texts = [r["text"] for name in ("en_docs", "zh_docs", "zh_classical", "multilingual_docs") for r in read_corpus(name)]
    heads = [t.encode("utf-8", "surrogatepass")[:budget].decode("utf-8", "ignore")
             for t in texts for budget in (1000, 4000)]
    edge = ["", "a", "ab", "SHOUTED ENGLISH TEXT", "中", "e\u0301t\u00e9", "\ud800 lone surrogate", "🙂" * 40,
            "\x00\x01\x02", " " * 7] + list(SAMPLES.values())
    for text in heads + edge:
        assert identifier().classify(text) == reference.classify(text), text[:60]
    assert len(heads) > 1000
