"""Benchmark decontamination: planted copies of benchmark items (verbatim and reformatted, en and zh) are
removed or cut, topically similar clean documents are not, and the report counts it per benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from data_pipeline.chinese_script import to_traditional
from data_pipeline.clean import clean_records
from data_pipeline.config import ConfigError, plain, validate
from data_pipeline.decontamination import DEFAULT_FIELDS, build_index, cut_spans, record_text
from data_pipeline.stages.decontaminate import Decontaminate

from .conftest import load_config, output_rows, read_corpus

BENCH_DIR = Path(__file__).parent / "data" / "benchmarks"
BENCHMARKS = {p.stem: str(p) for p in sorted(BENCH_DIR.glob("*.jsonl"))}
ZH = ("ceval", "cmmlu")


def _records(name: str) -> list[dict]:
    return [json.loads(line) for line in Path(BENCHMARKS[name]).read_text(encoding="utf-8").splitlines()]


def _question(name: str, rec: dict) -> str:
    return rec.get("question") or rec.get("Question") or rec["prompt"]


def _choices(rec: dict) -> list[str]:
    return rec.get("choices") or [rec[k] for k in "ABCD" if k in rec]


def _fillers(lang: str, start: int, count: int) -> list[str]:
    """Distinct real paragraphs (the demo corpus, from doc ``start`` on) to embed planted items in."""
    docs = [r["text"] for r in read_corpus("zh_docs" if lang == "zh" else "en_docs") if len(r["text"]) > 900]
    return [d[:450] for d in docs[start:start + count]]


def planted_corpus() -> tuple[list[tuple[str, str]], list[str]]:
    """([(benchmark, document)] with a benchmark item embedded, [clean documents]).

    Per item: verbatim with lettered options; reformatted (en: upper case, options on one line, extra
    spaces; zh: Traditional script, full-width punctuation and letters; code: re-indented); and for
    items whose question alone is at least n units, the question alone inside prose.
    """
    planted: list[tuple[str, str]] = []
    fill = {"en": iter(_fillers("en", 0, 80)), "zh": iter(_fillers("zh", 0, 80))}
    for name in BENCHMARKS:
        lang = "zh" if name in ZH else "en"
        for rec in _records(name):
            q, opts = _question(name, rec), _choices(rec)
            if name == "humaneval":
                code = rec["prompt"] + rec["canonical_solution"]
                variants = [f"Here is my solution:\n\n```python\n{code}```",
                            "My attempt, tabs and all:\n" + code.replace("    ", "\t")]
            elif name == "gsm8k":
                variants = [f"Question: {q}\nAnswer: {rec['answer']}",
                            f"PRACTICE PROBLEM.  {q.upper()}   Worked solution: {rec['answer'].replace(chr(10), ' ')}",
                            f"Someone asked on the forum: \"{q}\" Nobody answered."]
            elif lang == "en":
                lettered = "\n".join(f"{'ABCD'[i]}. {o}" for i, o in enumerate(opts))
                variants = [f"{q}\n{lettered}\nAnswer: B",
                            f"1)  {q.upper()}  " + "  ".join(f"({'abcd'[i]}) {o}" for i, o in enumerate(opts))]
                if len(q.split()) >= 13:
                    variants.append(f"My teacher asked us: {q} I still do not know.")
            else:
                lettered = "\n".join(f"{'ABCD'[i]}. {o}" for i, o in enumerate(opts))
                wide = "　".join(f"{'ＡＢＣＤ'[i]}．{o}" for i, o in enumerate(opts))
                variants = [f"{q}（　）\n{lettered}\n答案：A",
                            to_traditional(f"第3题．{q.replace('，', '、')}（　）{wide}")]
                if sum("\u4e00" <= c <= "\u9fff" for c in q) >= 20:
                    variants.append(f"今天老师在课上问：{q}？同学们讨论了很久。")
            for v in variants:
                planted.append((name, f"{next(fill[lang])}\n\n{v}\n\n{next(fill[lang])}"))
    clean = CLEAN_SIMILAR + _fillers("en", 100, 30) + _fillers("zh", 100, 30)
    return planted, clean


# Written for this test: the same topics, phrasing and templates as the sample benchmarks, no shared n-gram.
CLEAN_SIMILAR = [
    "On cold mornings a fog horn carries much farther than in the afternoon. Sailors explain it by the layer "
    "of chilly air that hugs the sea: sound bends back toward it instead of escaping upward into the sky.",
    "When a government puts a tariff on imported copper, economists ask how elastic domestic supply is. If "
    "wire makers can expand output cheaply, the price barely moves; if they cannot, buyers pay the tax.",
    "Thermophilic bacteria keep their enzymes folded at high temperatures with extra disulfide bridges and "
    "chaperones. Move a culture far above its optimum and the least stable enzymes unfold first.",
    "A baker who makes fourteen loaves a week and gives three to the neighbours sells eleven; at six dollars "
    "each that is sixty-six dollars a week, which over a month adds up to a little over two hundred dollars.",
    "from typing import List\n\n\ndef count_valleys(depths: List[int]) -> int:\n    \"\"\" Count the indices "
    "whose value is below the values on either side; the ends are ignored.\n    \"\"\"\n    return sum(1 for "
    "i in range(1, len(depths) - 1) if depths[i] < min(depths[i - 1], depths[i + 1]))\n",
    # the 13-character stem of a sample C-Eval item, with other options: a different question
    "下列关于细胞的叙述，正确的是（　）\nA. 细胞核是细胞代谢和遗传的控制中心\nB. 核糖体是所有细胞器中最大的\n"
    "C. 植物细胞都含有叶绿体\nD. 细胞壁是所有细胞的边界\n答案：A",
    "老旧小区改造是城市更新的重要内容。很多城市先听取居民意见，再由街道统一组织施工，改造内容包括加装电梯、"
    "更换管网和整治绿化。居民议事会在其中发挥了作用，这也是基层民主的一种实践。",
    "用一根六米长的铁丝围成长方形，什么时候面积最大？答案是围成正方形，也就是边长为一点五米的时候。"
    "这类问题可以用二次函数的最大值来解决，是初中数学的常见题型。",
    "排序算法的复杂度与输入有关。插入排序在输入已经有序时只需要线性时间，而选择排序无论输入如何都要比较平方次。"
    "归并排序和堆排序在最坏情况下也能保证线性对数时间。",
    to_traditional("青川县的石桥大多修建于清代，由商会和乡绅共同出资。县志记载东门外原有一座木桥，后来因洪水冲毁而改建为石桥。"),
]


def _cfg(**block):
    base = {"benchmarks": BENCHMARKS, "fields": list(DEFAULT_FIELDS), "action": "drop", "cut_margin": 20,
            "min_remaining_chars": 100, "max_cuts": 10}
    return plain(load_config(input="x", output="y", stages=["normalize", "decontaminate"],
                             decontaminate={**base, **block}))


def _reader_rows(texts: list[str]) -> list[dict]:
    return [{"kind": "record", "id": f"doc{i}", "text": t, "line": i + 1, "source": "test", "lang_hint": None,
             "file": "t.jsonl", "file_key": "0-t", "error": None, "raw": None} for i, t in enumerate(texts)]


@pytest.mark.parametrize("action", ["drop", "cut"])
def test_planted_contamination_is_removed_and_clean_documents_are_kept(action):
    planted, clean = planted_corpus()
    assert len(planted) >= 30 and {b for b, _ in planted} == set(BENCHMARKS)
    cfg = _cfg(action=action)
    rows = clean_records(_reader_rows([d for _, d in planted] + clean), cfg).to_pylist()
    hits = 0
    index = build_index(BENCHMARKS, DEFAULT_FIELDS)
    for (bench, _), row in zip(planted, rows):
        if row["status"] == "dropped":
            hits += row["reason"] == f"contaminated:{bench}" and row["stage"] == "decontaminate"
        elif row["decontaminated_spans"]:
            assert row["decontaminated_from"] == bench
            assert index.find(row["text"]) is None  # nothing of the benchmark is left
            hits += 1
    assert hits / len(planted) >= 0.95, f"{hits}/{len(planted)}"
    if action == "drop":
        assert hits == len(planted)
    else:  # the fillers are long enough that most documents survive the cut
        assert sum(r["status"] == "kept" for r in rows[:len(planted)]) > len(planted) // 2
    for text, row in zip(clean, rows[len(planted):]):
        assert row["status"] == "kept" and row["decontaminated_spans"] == 0, text[:60]  # neither dropped nor cut


def test_the_demo_corpus_has_no_false_positive():
    """About 1,200 real documents (technical en/zh, classical poems) share no n-gram with the samples."""
    index = build_index(BENCHMARKS, DEFAULT_FIELDS)
    docs = read_corpus("en_docs") + read_corpus("zh_docs") + read_corpus("zh_classical")
    assert len(docs) > 1000 and [d["id"] for d in docs if index.find(d["text"])] == []


def _bench(tmp_path: Path, records: list[dict], name: str = "b.jsonl") -> str:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return str(path)


def test_short_items_are_matched_whole_or_counted_as_skipped(tmp_path):
    short = "the quick brown fox jumps over lazy dogs"  # 8 words: below 13, at word_min
    index = build_index({"s": _bench(tmp_path, [{"question": short}, {"question": "What is 2 + 2?"}])},
                        DEFAULT_FIELDS)
    assert index.stats["s"] == {"records": 2, "indexed": 1, "skipped_short": 1, "ngrams": 1}
    assert index.find("Yesterday THE quick, brown fox -- jumps over lazy dogs! again").counts == {"s": 1}
    assert index.find("the quick brown fox jumps over lazy cats") is None
    assert index.find("what is 2 + 2") is None  # never indexed: too short to tell from common text
    with pytest.raises(ConfigError, match=r"config key 'decontaminate.benchmarks.t': none of its 1 records"):
        build_index({"t": _bench(tmp_path, [{"question": "hi"}], "t.jsonl")}, DEFAULT_FIELDS)


def test_spans_point_into_the_original_text_when_normalising_changes_its_length():
    """NFKC turns the ligature into two letters; the cut must still remove the right characters."""
    index = build_index({"mmlu": BENCHMARKS["mmlu"]}, DEFAULT_FIELDS)
    text = ("Intro. Which enzyme in the \ufb01ctional bacterium Thermovibrio lucens would most likely be denatured "
            "\ufb01rst if the culture were moved. Outro.")
    match = index.find(text)
    assert match is not None and match.benchmark == "mmlu"
    assert cut_spans(text, match.spans, 0) == ("Intro.\n\n. Outro.", 1, 2)


def test_cjk_matching_ignores_script_punctuation_spacing_and_option_labels(tmp_path):
    q = "一位工程师用长度为六米的钢管围成一个矩形框架要使面积最大"
    index = build_index({"zh": _bench(tmp_path, [{"question": q}])}, DEFAULT_FIELDS)
    assert ("char", 20) in index.tables
    assert index.find("题目：一位工程師用長度為六米的鋼管，圍成一個矩形框架") is not None  # Traditional, punctuated
    assert index.find("一 位 工 程 师 用 长 度 为 六 米 的 钢 管 围 成 一 个 矩 形") is not None  # spaced out
    assert index.find("一位工程师用长度为六米的钢管围成") is None  # 16 characters < 20
    # a Chinese item's code is not matched in English text character by character
    code = build_index({"c": _bench(tmp_path, [{"question": "以下程序的输出是什么：printhelloworldfromthemainloop"}], "c.jsonl")},
                       DEFAULT_FIELDS)
    assert code.find("print hello world from the main loop, said nobody") is None


def test_thirteen_characters_would_match_an_exam_template():
    """Why char_ngram is 20: at 13 the clean exam question with the same stem counts as C-Eval."""
    template_doc = CLEAN_SIMILAR[5]
    assert build_index(BENCHMARKS, DEFAULT_FIELDS).find(template_doc) is None
    assert build_index(BENCHMARKS, DEFAULT_FIELDS, char_ngram=13, char_min=12).find(template_doc) is not None


def test_cut_spans_merges_with_margin_and_counts_pieces():
    text = "aaaa XXXX bbbb YYYY cccc"
    assert cut_spans(text, [(5, 9), (15, 19)], 0) == ("aaaa\n\nbbbb\n\ncccc", 2, 3)
    assert cut_spans(text, [(5, 9), (15, 19)], 2) == ("aaa\n\nbb\n\nccc", 2, 3)
    assert cut_spans(text, [(5, 9), (15, 19)], 3) == ("aa\n\ncc", 1, 2)  # the widened spans touch: one cut
    assert cut_spans(text, [(0, len(text))], 0) == ("", 1, 0)


def test_record_text_joins_fields_in_order():
    rec = {"question": "Q", "choices": ["a", "b"], "answer": 1, "subject": "x", "A": None}
    assert record_text(rec, DEFAULT_FIELDS) == "Q\na\nb\n1"
    assert record_text({"choices": {"text": ["t1", "t2"], "label": ["A", "B"]}}, ["choices"]) == "t1\nt2"


def test_no_benchmarks_is_a_no_op_and_bad_settings_name_their_key(tmp_path):
    stage = Decontaminate(plain({"benchmarks": {}}))
    assert stage.process("anything", {}) == ("anything", None)
    with pytest.raises(ConfigError, match="config key 'decontaminate.action'"):
        Decontaminate(plain({"benchmarks": {}, "action": "erase"}))
    with pytest.raises(ConfigError, match="config key 'decontaminate.benchmarks.gone'"):
        validate(load_config(input="x", output="y", **{"decontaminate.benchmarks": {"gone": str(tmp_path / "no")}}))
    with pytest.raises(ConfigError, match="config key 'decontaminate.action'"):
        validate(load_config(input="x", output="y", **{"decontaminate.action": "erase"}))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "fine"}\n{not json\n')
    with pytest.raises(ConfigError, match=r"config key 'decontaminate.benchmarks.bad': .*bad.jsonl:2 is not JSON"):
        Decontaminate(plain({"benchmarks": {"bad": str(bad)}, "word_min": 1}))
    with pytest.raises(ConfigError, match=r"config key 'decontaminate.benchmarks.bad': .*bad.jsonl:2"):
        validate(load_config(input="x", output="y", **{"decontaminate.benchmarks": {"bad": str(bad)}}))


def test_report_counts_per_benchmark_end_to_end(ray_cluster, tmp_path):
    """One Ray run in cut mode with the rule stages: the report's per-benchmark counts are what the
    stage did to each document, and cut documents carry their spans into the shards. The model
    stages are left out: they rightly drop some bare benchmark questions first (as low quality /
    high perplexity), which would leave decontamination less to count here."""
    from data_pipeline.pipeline import run

    planted, clean = planted_corpus()
    bare = [record_text(recs[0], DEFAULT_FIELDS) for recs in map(_records, BENCHMARKS)]  # too little left: dropped
    docs = [d for _, d in planted] + clean + bare
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "mix.jsonl").write_text(
        "".join(json.dumps({"id": f"d{i}", "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(docs)),
        encoding="utf-8")
    overrides = {"decontaminate.benchmarks": BENCHMARKS, "decontaminate.action": "cut", "decontaminate.cut_margin": 20,
                 "decontaminate.min_remaining_chars": 100, "heldout.fraction": 0.0, "dedup.fuzzy": False,
                 "stages": [s for s in load_config(input="x", output="y").stages
                            if s not in ("quality_model", "perplexity")]}
    cfg = load_config(input=str(tmp_path / "in"), output=str(tmp_path / "out"), **overrides)
    run(cfg)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    rows = clean_records(_reader_rows(docs), plain(cfg)).to_pylist()  # the same stages, without Ray
    expected: dict[str, dict] = {}
    for r in rows:
        if r["stage"] == "decontaminate":
            expected.setdefault(r["reason"].split(":")[1], {"dropped": 0, "cut": 0, "spans_cut": 0})["dropped"] += 1
        elif r["status"] == "kept" and r["decontaminated_from"]:
            e = expected.setdefault(r["decontaminated_from"], {"dropped": 0, "cut": 0, "spans_cut": 0})
            e["cut"] += 1
            e["spans_cut"] += r["decontaminated_spans"]
    assert report["decontamination"] == expected and set(expected) == set(BENCHMARKS)
    assert sum(e["dropped"] for e in expected.values()) >= 3 and sum(e["cut"] for e in expected.values()) >= 30
    shards = output_rows(tmp_path / "out", "shards")
    assert sum(r["decontaminated_spans"] > 0 for r in shards) == sum(e["cut"] for e in expected.values())
    assert "## Benchmark decontamination" in (tmp_path / "out" / "report.md").read_text()
    assert "decontaminated_from" in pq.read_schema(next((tmp_path / "out" / "shards").glob("*.parquet"))).names
