"""The Hugging Face export encodes exactly like SentencePiece (the exporter and demo rely on it)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from tokenizer.hf_export import save_hf_tokenizer

EDGE_CASES = [
    "", " ", "  two leading spaces", "trailing   ", "\n\nnewlines\n", "tabs\tand\tcode\n",
    "def main():\n    print('héllo, wörld')  # 注释\n    return 0\n",
    "#include <stdio.h>\nint main(void) { return 42; }\n",
    "emoji 😀👍🏽 👨‍👩‍👧 🇯🇵 and rare CJK 𠀋𪚥 龘",
    "mixed: English, 中文，日本語のテキスト, Deutsch ß, français œ, español ñ, русский, العربية",
    "numbers 3.14159 2026-11-22 1,000,000",
    "specials spelled in text: <s> </s> <pad> <unk> <|reserved_0|>",
    "\u3000全角空格\u00a0nbsp\u200bzwsp\ufeffbom",
]


def multilingual_set(helpers, data_dir) -> list[str]:
    docs = helpers.documents(data_dir, "heldout")
    langs = {d["lang"] for d in docs}
    assert {"en", "zh", "ja", "de", "fr", "es"} <= langs
    return [d["text"] for d in docs] + EDGE_CASES


@pytest.fixture(scope="module")
def auto_tokenizer(trained):
    return AutoTokenizer.from_pretrained(str(trained[1] / "hf"))


def test_autotokenizer_ids_equal_sentencepiece(auto_tokenizer, sp, helpers, data_dir):
    texts = multilingual_set(helpers, data_dir)
    for text in texts:
        expected = sp.encode(text)
        assert auto_tokenizer(text)["input_ids"] == expected, text[:80]
        assert auto_tokenizer.decode(expected) == text
    batch = auto_tokenizer(texts)["input_ids"]
    assert batch == sp.encode(texts)


def test_exporter_entry_point_writes_a_loadable_directory(trained, sp, tmp_path):
    """What the model exporter does: save next to a model, load with AutoTokenizer."""
    model_dir = tmp_path / "exported_model"
    save_hf_tokenizer(trained[1] / "tokenizer.model", model_dir)
    assert json.loads((model_dir / "tokenizer_config.json").read_text())["eos_token"] == "</s>"
    loaded = AutoTokenizer.from_pretrained(str(model_dir))
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id, loaded.unk_token_id) == (0, 1, 2, 3)
    assert len(loaded) == sp.get_piece_size()
    for text in EDGE_CASES:
        assert loaded.encode(text) == sp.encode(text)
    assert loaded.convert_ids_to_tokens(sp.encode("x = 1")) == sp.encode("x = 1", out_type=str)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=120) | st.text(alphabet="😀𠀋中 \t\n{}()ab12<>/s|", max_size=120))
def test_parity_on_arbitrary_text(auto_tokenizer, sp, text):
    assert auto_tokenizer(text)["input_ids"] == sp.encode(text)
