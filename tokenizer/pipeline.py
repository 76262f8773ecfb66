"""Run the configured steps in order and print a summary.

Step modules are imported only when their step runs: megatron-core, Ray and transformers
take many seconds to import, and a bad config should fail before paying for them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tokenizer.config import validate_config
from tokenizer.special_tokens import SpecialTokens


def run_pipeline(cfg) -> dict:
    steps = validate_config(cfg)
    out_dir = Path(cfg.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict = {"steps": {}}
    for step in steps:
        started = time.time()
        if step == "train":
            from tokenizer.hf_export import save_hf_tokenizer
            from tokenizer.train import train_tokenizer

            model = train_tokenizer(cfg)
            save_hf_tokenizer(model, out_dir / "hf")
            result = json.loads((out_dir / "train" / "sample_stats.json").read_text())
        elif step == "evaluate":
            from tokenizer.evaluate import evaluate_tokenizer

            result = evaluate_tokenizer(cfg)
        else:
            from tokenizer.encode import encode_corpus

            result = encode_corpus(cfg)
        summary["steps"][step] = {"seconds": round(time.time() - started, 2)}
        summary[step] = result
    print_summary(cfg, summary)
    return summary


def print_summary(cfg, summary: dict) -> None:
    out = Path(cfg.output)
    print(f"\n== tokenizer stage: {out} ==")
    for step, timing in summary["steps"].items():
        print(f"  {step:9s} {timing['seconds']:7.1f} s")
    if "train" in summary:
        sample = summary["train"]
        print(f"  sample: {sample['bytes'] / 1e6:.2f} MB in {sample['chunks']} chunks; by language: "
              + ", ".join(f"{k} {v['share']:.1%}" for k, v in sample["by_lang"].items()))
        ids = SpecialTokens.from_config(cfg.tokenizer.special_tokens).ids()
        print(f"  tokenizer.model vocab {cfg.tokenizer.vocab_size}; pad {ids['pad']} bos {ids['bos']} "
              f"eos/eod {ids['eos']} unk {ids['unk']} reserved {ids.get('reserved_0', '-')}.."
              f"{max(ids.values())}; HF tokenizer in {out / 'hf'}")
    if "evaluate" in summary:
        result = summary["evaluate"]
        names = list(result["tokenizers"])
        print("  tokens/byte  " + " ".join(f"{n:>15s}" for n in names))
        for lang, row in result["languages"].items():
            print(f"  {lang:11s}  " + " ".join(f"{row['tokens_per_byte'][n]:15.3f}" for n in names))
    if "encode" in summary:
        manifest = summary["encode"]
        if not manifest["complete"]:
            print(f"  encode stopped early: {manifest['remaining_shards']} shard(s) left (rerun to finish)")
            return
        print(f"  encoded {manifest['encoded_shards']} shard(s), resumed {manifest['skipped_shards']}; "
              f"dtype {manifest['dtype']}; manifest {out / 'indexed' / 'manifest.json'}")
        print(f"  {'train source':24s} {'tokens':>12s} {'documents':>10s} {'bytes':>12s} {'tok/byte':>8s}")
        for source, entry in manifest["train"].items():
            print(f"  {source:24s} {entry['tokens']:12d} {entry['documents']:10d} {entry['bytes']:12d} "
                  f"{entry['tokens'] / max(entry['bytes'], 1):8.3f}")
        total = sum(e["tokens"] for e in manifest["train"].values())
        print(f"  {'total':24s} {total:12d}")
