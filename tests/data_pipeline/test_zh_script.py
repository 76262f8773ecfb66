"""Traditional/Simplified Chinese: the zh_script label, dedup on the Simplified form, conversion on request."""

from __future__ import annotations

from data_pipeline.chinese_script import HANS, HANT, detect_script, to_simplified, to_traditional
from data_pipeline.clean import clean_records
from data_pipeline.config import plain

from .conftest import load_config, read_corpus


def _rows(texts):
    return [{"kind": "record", "id": f"doc{i}", "text": t, "line": i + 1, "source": "s", "lang_hint": None,
             "file": "f.jsonl", "file_key": "0-f", "error": None, "raw": None} for i, t in enumerate(texts)]


def _zh_doc() -> str:
    return next(r["text"] for r in read_corpus("zh_docs") if r["text"].count("。") > 15)


def test_detect_script():
    simplified = _zh_doc()
    assert detect_script(simplified) == HANS
    assert detect_script(to_traditional(simplified)) == HANT
    assert detect_script("Only English here.") == HANS  # nothing to tell by: Simplified, the identity for t2s


def test_a_traditional_mirror_signs_like_its_simplified_page_and_keeps_its_text():
    simplified = _zh_doc()
    traditional = to_traditional(simplified)
    cfg = plain(load_config(input="x", output="y"))
    table = clean_records(_rows([simplified, traditional, "An English document about the Debian package manager "
                                                          "apt and how it resolves dependencies between packages."]), cfg)
    rows = table.to_pylist()
    assert [r["zh_script"] for r in rows] == [HANS, HANT, None]
    assert rows[1]["text"] != rows[0]["text"] and detect_script(rows[1]["text"]) == HANT  # stored as written
    assert rows[0]["exact_hash"] == rows[1]["exact_hash"]
    same = sum(a == b for a, b in zip(rows[0]["signature"], rows[1]["signature"])) / len(rows[0]["signature"])
    assert same > 0.9


def test_convert_on_request():
    traditional = to_traditional(_zh_doc())
    cfg = plain(load_config(input="x", output="y", **{"zh_script.convert": "hans"}))
    (row,) = clean_records(_rows([traditional]), cfg).to_pylist()
    assert row["zh_script"] == HANS and detect_script(row["text"]) == HANS
    assert to_simplified(row["text"]) == row["text"]  # no Traditional form left


def test_table_verdicts_equal_in_context_verdicts_and_close_calls_are_counted_in_context():
    from data_pipeline import chinese_script as cs

    pure = [r["text"] for name in ("zh_docs", "zh_classical", "multilingual_docs") for r in read_corpus(name)]
    pure = [t for t in pure if sum("\u4e00" <= ch <= "\u9fff" for ch in t[:cs.SAMPLE_CHARS]) >= 50]
    traditional = [to_traditional(t) for t in pure]
    mixed = [to_traditional(t[:len(t) // 2]) + t[len(t) // 2:] for t in pure]  # close calls by construction
    taken_from_table = 0
    for text in pure + traditional + mixed:
        sample = text[:cs.SAMPLE_CHARS]
        assert detect_script(text) == cs.detect_script_in_context(text), text[:60]
        trad, simp = cs.table_counts(sample)
        clear = trad + simp >= cs.MIN_EVIDENCE and abs(trad - simp) > cs.CLEAR_MARGIN * (trad + simp)
        taken_from_table += clear
        in_context = cs.in_context_counts(sample)
        if clear and in_context is not None:  # the table's drift from in-context counts
            drift = abs(in_context[0] - trad) + abs(in_context[1] - simp)
            assert drift < abs(trad - simp), text[:60]  # a verdict the drift could not have flipped
    assert len(pure) > 300
    assert taken_from_table >= 0.95 * 2 * len(pure)  # the pure and fully converted documents take the fast path
    assert taken_from_table < len(pure) * 3  # and some half-converted ones do not
