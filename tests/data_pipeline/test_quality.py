"""Quality rules: real reference text and poems pass, planted junk fails with a named rule."""

import numpy as np

from data_pipeline.config import plain
from data_pipeline.quality import _dup_ngram_char_fraction, _dup_ngram_fractions, quality_verdict

from .conftest import load_config, read_corpus

BOILERPLATE_EN = ("Home | About us | Contact | Privacy policy | Terms of use\nSubscribe to our newsletter!\n"
                  "This website uses cookies to improve your experience. Accept all cookies.\n"
                  "Copyright 2024 All rights reserved. Powered by WordPress.\nLogin | Register | Forgot password?\n") * 3
BOILERPLATE_ZH = "首页 | 关于我们 | 联系我们 | 隐私政策\n点击这里登录 点击这里注册\n版权所有 © 2024 保留所有权利\n扫码关注我们的公众号\n" * 4


def qcfg():
    return plain(load_config(input="x", output="y")).quality


def test_real_english_and_chinese_docs_pass():
    cfg = qcfg()
    en = [r["text"] for r in read_corpus("en_docs")[:40]]
    zh = [r["text"] for r in read_corpus("zh_classical")[:40]]
    en_fail = [quality_verdict(t, "en", cfg)[0] for t in en]
    zh_fail = [quality_verdict(t, "zh", cfg)[0] for t in zh]
    assert sum(r is not None for r in en_fail) <= 1, en_fail
    assert sum(r is not None for r in zh_fail) <= 1, zh_fail


def test_boilerplate_and_repetition_fail():
    cfg = qcfg()
    assert quality_verdict(BOILERPLATE_EN, "en", cfg)[0] == "gopher_dup_lines"
    assert quality_verdict(BOILERPLATE_ZH, "zh", cfg)[0] == "gopher_dup_lines"
    spam = "Buy now! Buy now! Buy now! Best price best price best price. Click here click here click here. " * 12
    assert quality_verdict(spam, "en", cfg)[0] == "gopher_dup_ngram"


def test_short_and_lorem_and_hex_fail():
    cfg = qcfg()
    assert quality_verdict("Page not found", "en", cfg)[0] == "too_short"
    assert quality_verdict("加载中……", "zh", cfg)[0] == "too_short"
    real = read_corpus("en_docs")[0]["text"]
    assert quality_verdict(real, "en", cfg)[0] is None
    assert quality_verdict(real + "\nLorem ipsum dolor sit amet.", "en", cfg)[0] == "c4_lorem_ipsum"
    blob = np.random.default_rng(1).integers(0, 256, size=1500).astype(np.uint8).tobytes()
    hexdump = "\n".join(blob[i:i + 16].hex(" ") for i in range(0, len(blob), 16))
    assert quality_verdict(hexdump, "en", cfg)[0] == "gopher_mean_word_length"


def test_thresholds_are_per_language():
    cfg = qcfg()
    text = "短句。" * 5  # 15 characters: too short for zh (min_chars 30)
    assert quality_verdict(text, "zh", cfg)[0] == "too_short"
    cfg["zh"]["min_chars"] = 10
    assert quality_verdict(text, "zh", cfg)[0] != "too_short"


def test_signals_are_returned():
    reason, signals = quality_verdict(read_corpus("en_docs")[0]["text"], "en", qcfg())
    assert reason is None
    assert signals["units"] > 30 and 0.0 <= signals["alpha_words"] <= 1.0


def test_dup_ngram_early_stop_never_changes_the_verdict():
    rng = np.random.default_rng(0)
    limits = {5: 0.75, 6: 0.72, 7: 0.7, 8: 0.68, 9: 0.66, 10: 0.64}
    for _ in range(50):
        hashes = rng.integers(1, 20, size=200).astype(np.uint64)
        lengths = rng.integers(1, 8, size=200)
        fast = _dup_ngram_fractions(hashes, lengths, limits)
        full = {n: _dup_ngram_char_fraction(hashes, lengths, n) for n in limits}
        assert any(v > limits[n] for n, v in fast.items()) == any(v > limits[n] for n, v in full.items())
