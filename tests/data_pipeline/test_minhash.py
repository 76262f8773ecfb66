"""Vectorised MinHash: estimates track true Jaccard, banding groups near duplicates."""

import random

import numpy as np

from data_pipeline.config import plain
from data_pipeline.minhash import band_hashes, shingle_hashes, signatures

from .conftest import load_config, read_corpus


def dcfg():
    return plain(load_config(input="x", output="y")).dedup


def _edit(words, rate, rng):
    return [rng.choice(words) if rng.random() < rate else w for w in words]


def test_estimate_tracks_true_jaccard():
    cfg = dcfg()
    rng = random.Random(0)
    base = read_corpus("en_docs")[3]["text"]
    words = base.split()
    for rate in (0.0, 0.05, 0.2):
        other = " ".join(_edit(words, rate, rng))
        a, b = shingle_hashes(base, "en", cfg), shingle_hashes(other, "en", cfg)
        true = len(np.intersect1d(a, b)) / len(np.union1d(a, b))
        sig = signatures([a, b], 512, 7)
        est = float(np.mean(sig[0] == sig[1]))
        assert abs(est - true) < 0.08, (rate, est, true)


def test_identical_texts_share_every_band_and_unrelated_share_none():
    cfg = dcfg()
    docs = [r["text"] for r in read_corpus("zh_docs")[:3]]
    shingles = [shingle_hashes(t, "zh", cfg) for t in (docs[0], docs[0], docs[1], docs[2])]
    sig = signatures(shingles, cfg.num_perm, cfg.seed)
    bands = band_hashes(sig, cfg.bands, cfg.rows)
    assert bands.shape == (4, cfg.bands)
    assert np.array_equal(bands[0], bands[1])
    assert not set(bands[0]) & set(bands[2]) and not set(bands[0]) & set(bands[3])


def test_cjk_uses_character_shingles_and_batches_match_single_docs():
    cfg = dcfg()
    zh = shingle_hashes("软件包管理器下载归档文件", "zh", cfg)
    assert len(zh) == len("软件包管理器下载归档文件") - cfg.char_ngram + 1
    texts = [r["text"] for r in read_corpus("en_docs")[:6]]
    sets = [shingle_hashes(t, "en", cfg) for t in texts] + [np.empty(0, dtype=np.uint64)]
    together = signatures(sets, 64, 3)
    alone = np.vstack([signatures([s], 64, 3) for s in sets])
    assert np.array_equal(together, alone)
    assert (together[-1] == np.uint32(0xFFFFFFFF)).all()


def test_character_units_ignore_spaces_and_case_and_never_collide():
    from data_pipeline.text_units import char_codes, mix64

    cfg = dcfg()
    assert list(char_codes("软件 包\n管Ab")) == [ord(c) for c in "软件包管ab"]
    assert np.array_equal(shingle_hashes("软件包 管理器\t下载", "zh", cfg), shingle_hashes("软件包管理器下载", "zh", cfg))
    every_bmp_code_point = np.arange(0x10000, dtype=np.uint64)
    assert len(np.unique(mix64(every_bmp_code_point))) == 0x10000  # distinct characters, distinct hashes
    short = shingle_hashes("软件", "zh", cfg)  # fewer characters than n: one shingle of the whole text
    assert len(short) == 1
