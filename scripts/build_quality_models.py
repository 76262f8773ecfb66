"""Rebuild the tiny model-based-filter models in ``data/models/`` from the embedded corpus, deterministically.

    python scripts/build_quality_models.py            # writes data/models/*, prints manifest.json

Per language (en: en_docs; zh: zh_docs + zh_classical), documents planted as
junk or duplicates are left out and the rest split by a hash of the id into
train (80%) and held-out (20%).

* ``lm_<lang>.arpa.gz``: a 3-gram interpolated Kneser-Ney model on the train
  split (``data_pipeline.tools.arpa``); rare n-grams and words pruned (``PRUNE``).
* ``quality_<lang>.ftz``: a quantised fastText classifier. Positives: train
  documents. Negatives: the same kind of text made unreadable, each train
  document with its tokens shuffled within each line (word salad; fluent
  text vs. not is what a 3 MB corpus can teach), plus the planted boilerplate
  and binary junk. A real classifier is trained DCLM-style on curated vs.
  random crawl text (docs/data_pipeline.md).
* ``manifest.json``: sizes, the held-out separation (AUC of the classifier
  on held-out documents vs. their shuffled copies) and the perplexity
  cut-offs (33rd/66th percentile of the held-out documents' perplexities),
  which configs/data_pipeline.yaml copies.

Everything is seeded and single-threaded: the same corpus gives byte-identical files.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_pipeline.model_text import lm_lines, tokens  # noqa: E402
from data_pipeline.perplexity import load_lm, percentile_cutoffs, perplexity  # noqa: E402
from data_pipeline.quality_model import load_classifier, score, train  # noqa: E402
from data_pipeline.tools.arpa import build_arpa  # noqa: E402

SOURCES = {"en": ["en_docs"], "zh": ["zh_docs", "zh_classical"]}
JUNK = ("boilerplate", "binary_junk")
# n-grams (order >= 2) and words seen fewer times are pruned: keeps each gzipped ARPA under ~400 KB
PRUNE = {"en": 2, "zh": 4}


def _records(name: str) -> list[dict]:
    out = []
    with gzip.open(REPO / "data" / "corpus" / f"{name}.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec.get("text"), str) and rec["text"].strip():
                out.append(rec)
    return out


def held_out(doc_id: str) -> bool:
    return int(hashlib.sha1(doc_id.encode()).hexdigest(), 16) % 5 == 0


def scramble(text: str, rng: random.Random) -> str:
    """The text with its tokens shuffled within each line: same vocabulary, no fluency."""
    out = []
    for line in text.split("\n"):
        toks = tokens(line)
        rng.shuffle(toks)
        out.append(" ".join(toks))
    return "\n".join(out)


def corpus(lang: str) -> tuple[list[str], list[str], list[str]]:
    """(train texts, held-out texts, planted junk texts) of one language."""
    planted = {}
    with open(REPO / "data" / "corpus" / "planted.jsonl", encoding="utf-8") as fh:
        planted = {row["id"]: row["kind"] for row in map(json.loads, fh)}
    train_, held, junk = [], [], []
    for name in SOURCES[lang]:
        for rec in _records(name):
            kind = planted.get(rec["id"])
            if kind in JUNK:
                junk.append(rec["text"])
            elif kind is None:
                (held if held_out(rec["id"]) else train_).append(rec["text"])
    return train_, held, junk


def auc(pos: list[float], neg: list[float]) -> float:
    """P(a random positive scores above a random negative), ties half."""
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def build(lang: str, out_dir: Path) -> dict:
    train_texts, held_texts, junk = corpus(lang)
    rng = random.Random(f"quality-{lang}")
    lm_path = out_dir / f"lm_{lang}.arpa.gz"
    sentences = [toks for t in train_texts for toks in lm_lines(t)]
    ngrams = build_arpa(sentences, lm_path, order=3, min_count=PRUNE[lang], min_word_count=PRUNE[lang])
    load_lm.cache_clear()
    lm = load_lm(str(lm_path))
    held_ppl = [v for v in (perplexity(lm, t) for t in held_texts) if v is not None]
    cutoffs = percentile_cutoffs(held_ppl)
    scrambled_ppl = [v for v in (perplexity(lm, scramble(t, rng)) for t in held_texts) if v is not None]

    clf_path = out_dir / f"quality_{lang}.ftz"
    negatives = [scramble(t, rng) for t in train_texts] + junk
    counts = train(train_texts, negatives, str(clf_path))
    load_classifier.cache_clear()
    clf = load_classifier(str(clf_path))
    pos = [score(clf, t) for t in held_texts]
    neg = [score(clf, scramble(t, rng)) for t in held_texts]
    return {
        "train_docs": len(train_texts), "heldout_docs": len(held_texts), "junk_docs": len(junk),
        "lm": {"file": lm_path.name, "bytes": lm_path.stat().st_size, "ngrams": ngrams,
               "cutoffs": cutoffs, "heldout_median_perplexity": round(sorted(held_ppl)[len(held_ppl) // 2], 1),
               "scrambled_median_perplexity": round(sorted(scrambled_ppl)[len(scrambled_ppl) // 2], 1)},
        "classifier": {"file": clf_path.name, "bytes": clf_path.stat().st_size, **counts,
                       "heldout_auc": round(auc(pos, neg), 4),
                       "heldout_mean_score": round(sum(pos) / len(pos), 4),
                       "scrambled_mean_score": round(sum(neg) / len(neg), 4)},
    }


def main() -> None:
    out_dir = REPO / "data" / "models"
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {lang: build(lang, out_dir) for lang in SOURCES}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    main()
