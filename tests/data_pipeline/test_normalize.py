"""Normalisation: NFKC for prose only, mojibake repair, binary rejection, whitespace."""

from omegaconf import OmegaConf

from data_pipeline.config import plain
from data_pipeline.normalize import bad_char_fraction, dedup_key_text, is_code_ish, normalize_document, repair_mojibake

from .conftest import load_config


def cfg():
    return plain(load_config(input="x", output="y")).normalize


def test_nfkc_folds_fullwidth_letters_in_prose():
    text, reason = normalize_document("Ｆｕｌｌｗｉｄｔｈ letters and the ﬁrst ligature.", cfg())
    assert reason is None
    assert text == "Fullwidth letters and the first ligature."


def test_code_ish_text_keeps_superscripts_and_indentation():
    code = "def area(r):\n    return r * r  # r²\n\nif x:\n    y = {1: 2};\n"
    assert is_code_ish(code, 0.3)
    text, reason = normalize_document(code, cfg())
    assert reason is None
    assert "r²" in text and "\n    return" in text


def test_mojibake_is_repaired():
    assert repair_mojibake("cafÃ© crÃ¨me") == "café crème"
    assert repair_mojibake("déjà vu, naïve") == "déjà vu, naïve"  # real Latin-1 text is untouched


def test_binary_text_is_rejected():
    blob = bytes(range(256)).decode("latin-1") * 4
    assert bad_char_fraction(blob) > 0.1
    _, reason = normalize_document(blob, cfg())
    assert reason == "broken_encoding"


def test_whitespace_is_normalised_and_dedup_key_ignores_it():
    raw = "  Title\u00a0here  \r\n\r\n\r\n\r\nBody\u200b text   with  spaces \n"
    text, _ = normalize_document(raw, cfg())
    assert text == "Title here\n\nBody text with spaces"
    assert dedup_key_text("a  b\n c") == dedup_key_text(" a b c \n\n")


def test_empty_text_is_dropped_with_reason():
    assert normalize_document(" \n\t ", cfg())[1] == "empty_after_normalization"
