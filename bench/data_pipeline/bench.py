"""Benchmark: our pipeline vs datatrove's local pipeline on a generated corpus with planted near duplicates.

    python bench/data_pipeline/bench.py --mb 200 --out /tmp/dp_bench      # the full-size run
    python bench/data_pipeline/bench.py --mb 16 --out /tmp/dp_bench       # what fits a busy 2-core box

The corpus is built from the embedded demo text (data/corpus): every
"unique" document is a random sample of 6-30 paragraphs of one language
(en: en_docs, zh: zh_docs + zh_classical), so two unique documents share
almost no 5-grams; then ``near_fraction`` of them get a near duplicate at 5,
10, 20 and 30% edit rate (word edits for en, character edits for zh, the
same substitute/delete/insert procedure as scripts/build_demo_corpus.py).
en and zh are generated and scored separately.

Both pipelines run the same kind of work on the same files, with 2 workers:
ours (``data_pipeline.pipeline.run``: normalise, langid, quality filters,
PII, exact + MinHash dedup, held-out split) and datatrove 0.10 (Gopher
repetition + Gopher quality + C4 + FineWeb filters for en, Gopher
repetition for zh, then its 4-stage MinHash dedup with the same 5-gram
shingles and 48 x 3 banding). datatrove's word tokenizers need spaCy; we
give it a regex tokenizer instead (faster than spaCy, so its throughput here
is an upper bound), and it runs no language id (its filter downloads a
fastText model). A second datatrove arm, ``datatrove_models``, adds its
fastText classifier and KenLM perplexity filters with our shipped models and
thresholds (``datatrove_model_filters``), the like-for-like comparison for our
model stages; ``--datatrove-arms`` picks the arms.

Dedup quality is scored on the documents that reached the dedup step in each
pipeline: a planted duplicate removed by dedup is a true positive; any other
document removed by dedup a false positive.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RATES = (0.05, 0.10, 0.20, 0.30)
# The benchmark counts copies edited by up to 30% as duplicates; en copies at 30% edits have word
# 5-gram Jaccard 0.13-0.2, below the pipeline's default 0.25 (which keeps different real sections that
# share a table apart), so our run uses the threshold that matches the benchmark's definition. zh keeps
# 0.25: unrelated zh documents here share unscrambled code and Latin text up to Jaccard 0.4.
BENCH_DEFINITION = ("dedup.threshold.en=0.1",)
CJK = {"zh"}

sys.path.insert(0, str(REPO))
from scripts.build_demo_corpus import edit_text  # noqa: E402  (the demo corpus's own near-duplicate procedure)


def paragraphs(lang: str) -> list[str]:
    files = {"en": ["en_docs"], "zh": ["zh_docs", "zh_classical"]}[lang]
    planted = {json.loads(line)["id"] for line in open(REPO / "data/corpus/planted.jsonl", encoding="utf-8")}
    out = []
    for name in files:
        with gzip.open(REPO / f"data/corpus/{name}.jsonl.gz", "rt", encoding="utf-8") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if rec.get("id") in planted or not isinstance(rec.get("text"), str):
                    continue
                out.extend(p for p in rec["text"].split("\n") if len(p) >= (40 if lang in CJK else 80))
    # distinct prose paragraphs only: table rows and command lines recur across sections and would make
    # unrelated generated documents look alike
    return sorted(set(out))


def scramble(text: str, lang: str, vocab: list[str], rng: random.Random, rate: float = 0.5) -> str:
    """Replace ``rate`` of the words (characters for zh) by random corpus words.

    The demo text is ~1 MB per language, so a 200 MB corpus reuses every
    paragraph hundreds of times; without this, unrelated generated documents
    would share many 5-grams. After it, a 5-gram survives intact with
    probability 0.5^5, so unrelated documents look unrelated, while each
    document still has real words, punctuation and line structure.
    """
    if lang in CJK:
        return "".join(rng.choice(vocab) if ("\u4e00" <= c <= "\u9fff" and rng.random() < rate) else c for c in text)
    return "\n".join(" ".join(rng.choice(vocab) if rng.random() < rate else w for w in line.split(" "))
                     for line in text.split("\n"))


def generate(out: Path, lang: str, megabytes: float, near_fraction: float, files: int, seed: int) -> dict:
    """Write ``files`` jsonl.gz files of about ``megabytes`` MB of text and the planted ground truth."""
    rng = random.Random(seed)
    pool = paragraphs(lang)
    vocab = sorted({u for p in pool for u in (p if lang in CJK else p.split(" "))
                    if (("\u4e00" <= u <= "\u9fff") if lang in CJK else u.strip())})
    docs, planted, size, n = [], [], 0, 0
    target = megabytes * 1e6
    while size < target:
        text = scramble("\n".join(rng.sample(pool, rng.randint(6, 30))), lang, vocab, rng)
        doc_id = f"{lang}-{n:08d}"
        n += 1
        docs.append({"id": doc_id, "text": text})
        size += len(text.encode("utf-8"))
        if rng.random() < near_fraction:
            rate = RATES[len(planted) % len(RATES)]
            dup_id = f"{lang}-{n:08d}"
            n += 1
            dup = edit_text(text, rate, lang, rng)
            docs.append({"id": dup_id, "text": dup})
            planted.append({"id": dup_id, "of": doc_id, "edit_rate": rate})
            size += len(dup.encode("utf-8"))
    rng.shuffle(docs)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        part = docs[i::files]
        payload = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in part).encode("utf-8")
        (out / f"{lang}_bench_{i:03d}.jsonl.gz").write_bytes(gzip.compress(payload, compresslevel=1, mtime=0))
    with open(out.parent / f"planted_{lang}.jsonl", "w", encoding="utf-8") as fh:
        for row in planted:
            fh.write(json.dumps(row) + "\n")
    return {"documents": len(docs), "bytes": size, "planted": len(planted)}


def score(removed: set[str], reached: set[str], planted: list[dict]) -> dict:
    """Dedup precision/recall on the documents that reached dedup.

    A planted pair is found when exactly one of its two documents was removed
    (which one survives is each tool's own deterministic choice); a removed
    document that belongs to no planted pair is a false positive.
    """
    members = {p["id"] for p in planted} | {p["of"] for p in planted}
    tp_docs = len(removed & members)
    fp = len(removed - members)
    out = {"removed": len(removed), "false_positives": fp,
           "precision": tp_docs / (tp_docs + fp) if tp_docs + fp else 1.0, "by_rate": {}}
    found_all = reached_all = 0
    for rate in RATES:
        pairs = [p for p in planted if p["edit_rate"] == rate and p["id"] in reached and p["of"] in reached]
        found = sum(1 for p in pairs if (p["id"] in removed) != (p["of"] in removed))
        found_all += found
        reached_all += len(pairs)
        out["by_rate"][str(rate)] = {"pairs": len(pairs), "recall": round(found / len(pairs), 3) if pairs else None}
    out["recall"] = found_all / reached_all if reached_all else 0.0
    p, r = out["precision"], out["recall"]
    out["f1"] = round(2 * p * r / (p + r), 4) if p + r else 0.0
    out["precision"], out["recall"] = round(p, 4), round(r, 4)
    return out


def pipeline_config():
    """configs/data_pipeline.yaml without Hydra's own block."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(REPO / "configs/data_pipeline.yaml")
    return OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])


def run_ours(inp: Path, out: Path, lang: str, overrides: list[str]) -> dict:
    import pyarrow.parquet as pq
    from omegaconf import OmegaConf

    from data_pipeline.pipeline import run

    cfg = pipeline_config()
    cfg.input, cfg.output = str(inp / "*.jsonl.gz"), str(out)
    cfg.ray.progress = False
    cfg.heldout.fraction = 0.0  # score dedup on one output
    for item in overrides:  # e.g. dedup.threshold=0.15
        key, value = item.split("=", 1)
        OmegaConf.update(cfg, key, _parse(value), force_add=True)
    shutil.rmtree(out, ignore_errors=True)
    start = time.time()
    summary = run(cfg)
    seconds = time.time() - start
    reached = set()
    for path in (out / "_work" / "stage1").glob("*/*.parquet"):
        t = pq.read_table(path, columns=["id", "status"]).to_pylist()
        reached.update(r["id"] for r in t if r["status"] == "kept")
    kept = set()
    for path in (out / "shards").glob("*.parquet"):
        kept.update(pq.read_table(path, columns=["id"]).column("id").to_pylist())
    return {"seconds": seconds, "reached": reached, "removed": reached - kept, "summary": summary}


def _patch_datatrove_xxhash() -> None:
    """datatrove 0.10 hands str to xxhash, which the installed xxhash 4 rejects; encode first.

    Its executor forks its workers, so patching the module here reaches them.
    """
    import xxhash

    import datatrove.utils.hashes.xxhash as dt_xxhash

    dt_xxhash.xxhash32 = lambda data: xxhash.xxh32_intdigest(data.encode() if isinstance(data, str) else data)
    dt_xxhash.xxhash64 = lambda data: xxhash.xxh64_intdigest(data.encode() if isinstance(data, str) else data)


def _parse(value: str):
    import yaml

    return yaml.safe_load(value)


def regex_tokenizer(lang: str):
    """Words for en, characters for zh, as our quality rules split; stands in for spaCy (not installed)."""
    from datatrove.utils.word_tokenizers import WordTokenizer

    class RegexTokenizer(WordTokenizer):
        pattern = re.compile(r"\S+") if lang not in CJK else re.compile(r"\S")

        def word_tokenize(self, text: str) -> list[str]:
            return self.pattern.findall(text)

        def sent_tokenize(self, text: str) -> list[str]:
            return [s for s in re.split(r"(?<=[.!?。！？])\s*", text) if s]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [m.span() for m in self.pattern.finditer(text)]

    return RegexTokenizer(lang)


def datatrove_filters(lang: str, tok) -> list:
    """datatrove's filters with the thresholds of configs/data_pipeline.yaml, so both tools keep about the same."""
    from datatrove.pipeline.filters import C4QualityFilter, FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter

    filters = [GopherRepetitionFilter(dup_line_frac=0.4, dup_para_frac=0.4, dup_line_char_frac=0.3, dup_para_char_frac=0.3,
                                      top_n_grams=((2, 0.55), (3, 0.55), (4, 0.55)),
                                      dup_n_grams=((5, 0.75), (6, 0.72), (7, 0.7), (8, 0.68), (9, 0.66), (10, 0.64)),
                                      language=tok)]
    if lang not in CJK:
        filters += [GopherQualityFilter(min_doc_words=30, max_avg_word_length=14, max_symbol_word_ratio=0.3,
                                        max_non_alpha_words_ratio=0.3, language=tok),
                    C4QualityFilter(filter_no_terminal_punct=False, min_num_sentences=0, min_words_per_line=0,
                                    filter_curly_bracket=False, remove_citations=False, language=tok),
                    FineWebQualityFilter(line_punct_thr=0.0, short_line_thr=0.9, char_duplicates_ratio=0.3,
                                         new_line_ratio=0.5, language=tok)]
    return filters


def _patch_fasttext_numpy2() -> None:
    """fasttext-wheel 0.9.2's ``predict`` calls ``np.array(probs, copy=False)``, which NumPy 2 rejects.

    datatrove asks for the fasttext-numpy2-wheel build, which differs by exactly this; the venv has
    fasttext-wheel (our stage calls the C++ predict directly instead). Same cost either way.
    """
    import fasttext.FastText as ft
    import numpy as np

    class _NumpyCopyFalse:
        def __getattr__(self, name):
            return getattr(np, name)

        @staticmethod
        def array(obj, *args, copy=None, **kwargs):
            return np.asarray(obj, *args, **kwargs) if copy is False else np.array(obj, *args, **kwargs)

    ft.np = _NumpyCopyFalse()
    import datatrove.utils._import_utils as dt_import

    available = dt_import._is_distribution_available  # datatrove's check names the numpy-2 build: accept ours
    dt_import._is_distribution_available = lambda name: name == "fasttext-numpy2-wheel" or available(name)


def datatrove_model_filters(lang: str) -> list:
    """datatrove's equivalents of our model stages, with our shipped models and thresholds.

    - quality_model: datatrove's ``FastTextClassifierFilter`` (its predict, k=-1, whole document) with
      ``quality_model.langs.<lang>.model``, keeping ``__label__hq`` >= ``min_score``;
    - perplexity: datatrove's ``KenlmModel.get_perplexity`` (its CCNet normalisation, KenLM scoring)
      with ``perplexity.langs.<lang>.model``, dropping above ``max_perplexity``.

    Both models were trained on our tokenisation (data_pipeline/model_text.py: lowercased words,
    Chinese characters one by one), which datatrove has no tokenizer for: its arm gets the same regex
    in place of SentencePiece, applied after datatrove's own normalisation. So both arms normalise,
    tokenise and score every document that reaches the model stages, each with its own code.
    """
    from datatrove.data import Document
    from datatrove.pipeline.filters import FastTextClassifierFilter
    from datatrove.pipeline.filters.base_filter import BaseFilter
    from datatrove.utils.perplexity import KenlmModel

    from data_pipeline.model_config import resolve_model_path
    from data_pipeline.model_text import _TOKEN
    from data_pipeline.perplexity import _plain_arpa

    cfg = pipeline_config()
    clf, lm = cfg.quality_model, cfg.perplexity
    if lang not in clf.langs or lang not in lm.langs:
        return []
    clf_chars, lm_chars = clf.max_chars, lm.max_chars

    class RegexPieces:
        """Stands in for KenlmModel's SentencePiece (its models are downloaded): space-joined regex tokens."""

        def tokenize(self, text: str) -> str:
            return " ".join(_TOKEN.findall(text))

    class TokenizedFastText(BaseFilter):
        """datatrove's FastTextClassifierFilter on the first ``max_chars``, normalised and tokenised as the model
        was trained. Built in the worker, after the numpy-2 patch (datatrove's dependency check runs there)."""

        name = "fastText quality"

        def __init__(self, model_path: str, min_score: float) -> None:
            super().__init__()
            self.model_path, self.min_score = model_path, min_score
            self._clf = None

        def filter(self, doc: Document) -> bool:
            if self._clf is None:
                _patch_fasttext_numpy2()
                self._clf = FastTextClassifierFilter(self.model_path, keep_labels=("hq", self.min_score),
                                                     save_labels_in_metadata=False)
                self._normalizer = KenlmModel("local", lang)
            original = doc.text
            doc.text = RegexPieces().tokenize(self._normalizer.normalize(original[:clf_chars]))
            keep = self._clf.filter(doc)
            doc.text = original
            return keep

    class PerplexityFilter(BaseFilter):
        """datatrove's KenlmModel.get_perplexity on the first ``max_chars``; drops above ``max_perplexity``."""

        name = "KenLM perplexity"

        def __init__(self, model_path: str, max_perplexity: float) -> None:
            super().__init__()
            self.model_path, self.max_perplexity = model_path, max_perplexity
            self._lm = None

        def filter(self, doc: Document) -> bool:
            if self._lm is None:  # loaded in the worker: a kenlm.Model does not pickle
                import kenlm

                self._lm = KenlmModel("local", lang)
                self._lm._model = kenlm.Model(str(_plain_arpa(self.model_path)))
                self._lm._tokenizer = RegexPieces()
            return self._lm.get_perplexity(doc.text[:lm_chars]) <= self.max_perplexity

    return [TokenizedFastText(str(resolve_model_path(clf.langs[lang].model)), float(clf.langs[lang].min_score)),
            PerplexityFilter(str(resolve_model_path(lm.langs[lang].model)), float(lm.langs[lang].max_perplexity))]


def minhash_config():
    """The same shingles and banding as our default: word/char 5-grams, 48 bands x 3 rows."""
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.utils.hashing import HashConfig

    return MinhashConfig(hash_config=HashConfig(precision=64), n_grams=5, num_buckets=48, hashes_per_bucket=3)


def run_datatrove(inp: Path, out: Path, lang: str, workers: int, models: bool = False) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    tok = regex_tokenizer(lang)
    _patch_datatrove_xxhash()
    shutil.rmtree(out, ignore_errors=True)
    files = sorted(p.name for p in inp.glob("*.jsonl.gz"))
    tasks = len(files)
    filters = datatrove_filters(lang, tok) + (datatrove_model_filters(lang) if models else [])
    config = minhash_config()
    logs = out / "logs"
    start = time.time()
    LocalPipelineExecutor(pipeline=[JsonlReader(str(inp)), *filters, JsonlWriter(str(out / "filtered"))],
                          tasks=tasks, workers=workers, logging_dir=str(logs / "filter")).run()
    LocalPipelineExecutor(pipeline=[JsonlReader(str(out / "filtered")),
                                    MinhashDedupSignature(output_folder=str(out / "sigs"), config=config, language=tok)],
                          tasks=tasks, workers=workers, logging_dir=str(logs / "sigs")).run()
    LocalPipelineExecutor(pipeline=[MinhashDedupBuckets(input_folder=str(out / "sigs"), output_folder=str(out / "buckets"),
                                                        config=config)],
                          tasks=config.num_buckets, workers=workers, logging_dir=str(logs / "buckets")).run()
    LocalPipelineExecutor(pipeline=[MinhashDedupCluster(input_folder=str(out / "buckets"),
                                                        output_folder=str(out / "remove_ids"), config=config)],
                          tasks=1, logging_dir=str(logs / "clusters")).run()
    LocalPipelineExecutor(pipeline=[JsonlReader(str(out / "filtered")),
                                    MinhashDedupFilter(input_folder=str(out / "remove_ids"),
                                                       exclusion_writer=JsonlWriter(str(out / "removed"))),
                                    JsonlWriter(str(out / "deduped"))],
                          tasks=tasks, workers=workers, logging_dir=str(logs / "filter_dups")).run()
    seconds = time.time() - start

    def ids(folder: Path) -> set[str]:
        found = set()
        for path in folder.glob("*.jsonl.gz"):
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                found.update(json.loads(line)["id"] for line in fh)
        return found

    return {"seconds": seconds, "reached": ids(out / "filtered"), "removed": ids(out / "removed")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=200.0, help="MB of text per language")
    parser.add_argument("--langs", default="en,zh")
    parser.add_argument("--near-fraction", type=float, default=0.1)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/dp_bench"))
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds of all arms, interleaved; each arm reports its fastest round (the machine's "
                             "other load only ever slows a run down) and lists every round's seconds")
    parser.add_argument("--skip-datatrove", action="store_true")
    parser.add_argument("--datatrove-arms", default="filters,models",
                        help="datatrove variants to run: filters (its quality filters + MinHash, as before) and/or "
                             "models (the same plus its fastText classifier and KenLM perplexity filters with our "
                             "models: the like-for-like arm now that ours runs the model stages)")
    parser.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                        help="override a key of configs/data_pipeline.yaml for our pipeline (repeatable); "
                             f"default: {' '.join(BENCH_DEFINITION)}")
    args = parser.parse_args()
    if args.set is None:
        args.set = list(BENCH_DEFINITION)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()}-core CPU", "mb_per_lang": args.mb,
               "our_overrides": args.set}
    for lang in args.langs.split(","):
        data = args.out / f"input_{lang}"
        shutil.rmtree(data, ignore_errors=True)
        gen = generate(data, lang, args.mb, args.near_fraction, args.files, seed=7)
        planted = [json.loads(line) for line in open(args.out / f"planted_{lang}.jsonl", encoding="utf-8")]
        entry = {"corpus": gen}
        runners = {"ours": lambda: run_ours(data, args.out / f"ours_{lang}", lang, args.set)}
        arms = [] if args.skip_datatrove else args.datatrove_arms.split(",")
        if "filters" in arms:
            runners["datatrove"] = lambda: run_datatrove(data, args.out / f"datatrove_{lang}", lang, args.workers)
        if "models" in arms:
            runners["datatrove_models"] = lambda: run_datatrove(data, args.out / f"datatrove_models_{lang}", lang,
                                                                args.workers, models=True)
        rounds: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(args.repeats):
            for name, runner in runners.items():
                res = runner()
                rounds[name].append(round(res["seconds"], 1))
                entry[name] = {"seconds": min(rounds[name]), "rounds_s": rounds[name],
                               "docs_per_s": round(gen["documents"] / min(rounds[name]), 1),
                               "mb_per_s": round(gen["bytes"] / 1e6 / min(rounds[name]), 3),
                               "reached_dedup": len(res["reached"]),
                               "dedup": score(res["removed"], res["reached"], planted)}
                print(json.dumps({lang: {name: entry[name]}}, indent=1), flush=True)
        for arm in ("datatrove", "datatrove_models"):
            if arm in entry:
                entry["speedup" if arm == "datatrove" else "speedup_models"] = round(
                    entry[arm]["seconds"] / entry["ours"]["seconds"], 2)
        results[lang] = entry
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
