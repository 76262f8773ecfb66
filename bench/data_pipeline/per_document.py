"""CPU seconds per MB in one process: our per-document work vs datatrove's, on the same documents.

    python bench/data_pipeline/per_document.py OUT/input_en/en_bench_000.jsonl.gz en [REPEATS=3]

Ours: ``clean_records`` (normalise, language id, quality rules, PII, exact hash,
MinHash signature and bands) in batches of 128. datatrove: the filters that
bench.py gives it, then ``MinhashDedupSignature``'s shingling and signature
for each document the filters keep. Process CPU time, so other load on the
machine inflates it far less than wall-clock time; this isolates per-document
efficiency from orchestration (Ray Data vs datatrove's local executor).
The arms run interleaved ``REPEATS`` times and each reports its minimum: on a
shared machine one arm's CPU time swung 1.10-1.57 s/MB between runs minutes
apart, and contention only ever adds time.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import (REPO, _patch_datatrove_xxhash, datatrove_filters, datatrove_model_filters, minhash_config,  # noqa: E402
                   pipeline_config, regex_tokenizer)

sys.path.insert(0, str(REPO))
BATCH = 128  # documents per clean_records call, as ray.batch_size


def ours_cpu_seconds(rows: list[dict], plain_cfg) -> float:
    """CPU seconds of our per-document stages over ``rows``, in batches as Ray would hand them."""
    from data_pipeline.clean import clean_records

    clean_records(rows[:2], plain_cfg)  # load the language model outside the timing
    start = time.process_time()
    for i in range(0, len(rows), BATCH):
        clean_records(rows[i:i + BATCH], plain_cfg)
    return time.process_time() - start


def datatrove_cpu_seconds(rows: list[dict], lang: str, scratch: Path, models: bool = False) -> tuple[float, int]:
    """(CPU seconds, documents signed): datatrove's filters (``models``: and its fastText + KenLM filters
    with our models, bench.py's like-for-like arm), then shingles + signature of what they keep."""
    from datatrove.data import Document
    from datatrove.pipeline.dedup.minhash import MinhashDedupSignature

    _patch_datatrove_xxhash()
    tok = regex_tokenizer(lang)
    filters = datatrove_filters(lang, tok) + (datatrove_model_filters(lang) if models else [])
    signer = MinhashDedupSignature(output_folder=str(scratch), config=minhash_config(), language=tok)
    docs = [Document(text=r["text"], id=r["id"]) for r in rows]
    for f in filters:  # load the models outside the timing, as ours does
        f.filter(Document(text=docs[0].text, id="warm-up"))
    start, signed = time.process_time(), 0
    for doc in docs:
        verdicts = (f.filter(doc) for f in filters)  # True, False or (False, reason)
        if all(v is True or (isinstance(v, tuple) and v[0]) for v in verdicts):
            signed += 1
            signer.get_signature(signer.get_shingles(doc.text))
    return time.process_time() - start, signed


def main() -> None:
    from data_pipeline.config import plain
    from data_pipeline.stage1 import reader_rows

    path, lang = sys.argv[1], sys.argv[2]
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    cfg = pipeline_config()
    cfg.input, cfg.output = path, "unused"
    plain_cfg = plain(cfg)
    rows = [r for r in reader_rows({"path": path, "key": "k", "source": "s"}, plain_cfg["read"]) if r["text"]]
    mb = sum(len(r["text"].encode()) for r in rows) / 1e6
    scratch = Path(path).parent / "_dt_sig_scratch"
    ours, theirs, with_models = [], [], []
    for _ in range(repeats):  # interleaved, so a burst of load on the shared machine hits every arm alike
        ours.append(ours_cpu_seconds(rows, plain_cfg))
        seconds, signed = datatrove_cpu_seconds(rows, lang, scratch)
        theirs.append(seconds)
        seconds, signed_m = datatrove_cpu_seconds(rows, lang, scratch, models=True)
        with_models.append(seconds)
    # the minimum over repeats: other load only ever adds CPU time (cache and frequency contention)
    ours_s, theirs_s, models_s = min(ours), min(theirs), min(with_models)
    print(f"{lang}: {mb:.2f} MB, {len(rows)} docs, min of {repeats}; ours {ours_s / mb:.2f} cpu-s/MB; datatrove "
          f"filters+signature {theirs_s / mb:.2f} cpu-s/MB (signed {signed}), ratio {theirs_s / ours_s:.2f}; with its "
          f"fastText + KenLM filters {models_s / mb:.2f} cpu-s/MB (signed {signed_m}), ratio {models_s / ours_s:.2f}")
    print("  per repeat cpu-s/MB: ours " + " ".join(f"{x / mb:.2f}" for x in ours)
          + "; datatrove " + " ".join(f"{x / mb:.2f}" for x in theirs)
          + "; datatrove_models " + " ".join(f"{x / mb:.2f}" for x in with_models))

if __name__ == "__main__":
    main()
