"""Compression of the trained tokenizer on held-out text, per language, against references.

Tokens per UTF-8 byte is Tele-FLM's measure (lower is better; they report en 0.248,
zh 0.235 at 80k vocab).  Fertility is tokens per word for space-delimited languages and
tokens per character for zh/ja, which have no spaces between words.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from tokenizer.data_source import iter_batches, list_shards
from tokenizer.references import REFERENCES, load_references, sentencepiece_counter

OURS = "ours"


def evaluate_tokenizer(cfg) -> dict:
    """Write eval/eval.json, eval.md and eval.png under TOK_DIR; return the results."""
    out_dir = Path(cfg.output)
    model_path = out_dir / "tokenizer.model"
    if not model_path.is_file():
        raise FileNotFoundError(f"output: {model_path} not found; run the train step first")
    eval_cfg = cfg.tokenizer.evaluate
    counters = {OURS: sentencepiece_counter(model_path)} | load_references(list(eval_cfg.references))
    char_langs = set(eval_cfg.character_languages)
    budget = int(eval_cfg.max_bytes_per_lang)

    totals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for shard in tqdm(list_shards(cfg.input, "heldout"), desc="evaluate", unit="shard"):
        for batch in iter_batches(shard, ("text", "lang"), 256):
            for text, lang in zip(batch["text"], batch["lang"]):
                entry = totals[lang]
                if entry["bytes"] >= budget or not text:
                    continue
                entry["documents"] += 1
                entry["bytes"] += len(text.encode("utf-8"))
                entry["units"] += sum(1 for c in text if not c.isspace()) if lang in char_langs else len(text.split())
                for name, count in counters.items():
                    entry[f"tokens:{name}"] += count(text)
    if not totals:
        raise ValueError(f"input: no held-out text in {cfg.input}/heldout")

    vocab = {OURS: int(cfg.tokenizer.vocab_size)}
    results = {"tokenizers": {OURS: f"this tokenizer ({model_path.name}, vocab {vocab[OURS]})"}
               | {name: REFERENCES[name][0] for name in eval_cfg.references},
               "languages": {}}
    overall = defaultdict(int)
    for lang in sorted(totals):
        entry = totals[lang]
        row = {"documents": entry["documents"], "bytes": entry["bytes"],
               "fertility_unit": "character" if lang in char_langs else "word", "units": entry["units"],
               "tokens": {}, "tokens_per_byte": {}, "fertility": {}}
        for name in counters:
            tokens = entry[f"tokens:{name}"]
            row["tokens"][name] = tokens
            row["tokens_per_byte"][name] = tokens / entry["bytes"]
            row["fertility"][name] = tokens / max(entry["units"], 1)
            overall[name] += tokens
        overall["bytes"] += entry["bytes"]
        results["languages"][lang] = row
    results["all_tokens_per_byte"] = {name: overall[name] / overall["bytes"] for name in counters}

    eval_dir = out_dir / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    (eval_dir / "eval.json").write_text(json.dumps(results, indent=2))
    (eval_dir / "eval.md").write_text(markdown_table(results))
    bar_chart(results, eval_dir / "eval.png")
    return results


def markdown_table(results: dict) -> str:
    names = list(results["tokenizers"])
    lines = ["# Tokenizer evaluation on held-out text", "",
             "Tokens per UTF-8 byte (lower is better); fertility in parentheses "
             "(tokens per word, or per character for zh/ja).", "",
             "| lang | bytes | " + " | ".join(names) + " |",
             "|---|---:|" + "---:|" * len(names)]
    for lang, row in results["languages"].items():
        cells = [f"{row['tokens_per_byte'][n]:.3f} ({row['fertility'][n]:.2f})" for n in names]
        lines.append(f"| {lang} | {row['bytes']} | " + " | ".join(cells) + " |")
    lines.append("| all | | " + " | ".join(f"{results['all_tokens_per_byte'][n]:.3f}" for n in names) + " |")
    lines += ["", "Tokenizers:", ""] + [f"- `{n}`: {d}" for n, d in results["tokenizers"].items()]
    lines += ["", "Tele-FLM (80k vocab, paper): en 0.248, zh 0.235 tokens per byte.", ""]
    return "\n".join(lines)


def bar_chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    langs = list(results["languages"])
    names = [n for n in results["tokenizers"] if n != "utf8_bytes"]  # 1.0 everywhere dwarfs the rest
    width = 0.8 / len(names)
    figure, axis = plt.subplots(figsize=(max(6, 1.3 * len(langs)), 4))
    for offset, name in enumerate(names):
        values = [results["languages"][lang]["tokens_per_byte"][name] for lang in langs]
        axis.bar([i + offset * width for i in range(len(langs))], values, width, label=name)
    axis.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(langs))], langs)
    axis.set_ylabel("tokens per UTF-8 byte (lower is better)")
    axis.set_title("Held-out compression by language")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
