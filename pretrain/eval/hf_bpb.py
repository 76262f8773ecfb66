"""`python -m pretrain.eval.hf_bpb`: bits per byte of a Hugging Face model per language and source.

Scores held-out text (the data stage's ``heldout/`` parquet shards, or any
parquet/jsonl with ``text``, ``lang`` and ``source`` columns) with an exported
model directory, in batches, and writes ``bpb.json``, ``bpb.md`` and a bar
chart ``bpb.png``. The scoring convention is the one in :mod:`pretrain.eval.bpb`, so
the numbers agree with what the trainer reports for the checkpoint the model
was exported from.

    python -m pretrain.eval.hf_bpb hf_dir=runs/demo/hf heldout=runs/demo/data/heldout output=runs/demo/eval
"""

from __future__ import annotations

import glob
import json
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import hydra
from omegaconf import DictConfig

from pretrain.eval.bpb import Score, score_token_documents


def iter_records(data: str, text_key: str = "text") -> Iterator[dict]:
    """Yield {text, lang, source} records from a directory or glob of parquet / jsonl files."""
    import pyarrow.parquet as pq

    path = Path(data)
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.suffix in {".parquet", ".jsonl"})
    else:
        files = sorted(glob.glob(data))
    if not files:
        raise FileNotFoundError(f"evaluation data: no .parquet or .jsonl files at '{data}' (config key: heldout)")
    for file in files:
        if file.endswith(".parquet"):
            for row in pq.read_table(file).to_pylist():
                yield {"text": row[text_key], "lang": row.get("lang", "unknown"), "source": row.get("source", "unknown")}
        else:
            with open(file, encoding="utf-8") as fh:
                for number, line in enumerate(fh, 1):
                    try:
                        row = json.loads(line)
                        yield {"text": row[text_key], "lang": row.get("lang", "unknown"),
                               "source": row.get("source", "unknown")}
                    except (json.JSONDecodeError, KeyError) as err:
                        raise ValueError(f"{file}:{number}: not a record with a '{text_key}' field ({err})") from err


def evaluate_hf_model(model_dir: str, data: str, max_len: int | None, batch_size: int,
                      max_documents: int | None = None) -> dict[str, dict[str, Score]]:
    """Score every held-out document once, accumulating by language, by source and overall."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    eod_id = tokenizer.eos_token_id
    if eod_id is None:
        raise ValueError(f"{model_dir}: the tokenizer has no eos token; BPB scoring needs it as the document separator")
    vocab = len(tokenizer)
    # The trainer scores held-out text in windows of its sequence length; use the same by default.
    max_len = int(max_len or model.config.max_position_embeddings)

    def logits_fn(ids: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids).logits

    records = list(iter_records(data))[:max_documents]
    by_pair: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for record in records:
        by_pair[(record["lang"], record["source"])].append(record)
    groups: dict[str, dict[str, Score]] = {"lang": defaultdict(Score), "source": defaultdict(Score),
                                          "all": defaultdict(Score)}
    progress = tqdm(total=len(records), desc="scoring held-out documents", unit="doc")
    for (lang, source), pair_records in sorted(by_pair.items()):
        def documents(recs=pair_records):
            for record in recs:
                progress.update(1)
                tokens = tokenizer(record["text"], add_special_tokens=False)["input_ids"] + [eod_id]
                yield tokens, len(record["text"].encode("utf-8"))

        score = score_token_documents(logits_fn, documents(), eod_id=eod_id, max_len=max_len,
                                      batch_size=batch_size, vocab_size=vocab)
        groups["lang"][lang].add(score)
        groups["source"][source].add(score)
        groups["all"]["all"].add(score)
    progress.close()
    return groups


def write_report(groups: dict[str, dict[str, Score]], output: Path, title: str) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output.mkdir(parents=True, exist_ok=True)
    result = {kind: {name: score.as_dict() for name, score in sorted(scores.items())}
              for kind, scores in groups.items()}
    (output / "bpb.json").write_text(json.dumps(result, indent=2))
    lines = [f"# Bits per byte: {title}", "", "| group | name | BPB | loss (nats/token) | perplexity | tokens | bytes | docs |",
             "|---|---|---|---|---|---|---|---|"]
    for kind in ("lang", "source", "all"):
        for name, row in result[kind].items():
            lines.append(f"| {kind} | {name} | {row['bpb']:.4f} | {row['loss']:.4f} | {row['perplexity']:.2f} | "
                         f"{row['tokens']} | {row['bytes']} | {row['documents']} |")
    (output / "bpb.md").write_text("\n".join(lines) + "\n")
    langs = result["lang"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(list(langs), [row["bpb"] for row in langs.values()], color="#4c72b0")
    ax.set_ylabel("bits per byte (lower is better)")
    ax.set_title(f"Held-out BPB per language: {title}")
    fig.tight_layout()
    fig.savefig(output / "bpb.png", dpi=120)
    plt.close(fig)
    return result


@hydra.main(config_path="../../configs", config_name="evaluate", version_base=None)
def main(cfg: DictConfig) -> None:
    if not cfg.hf_dir or not cfg.heldout:
        sys.exit("pretrain.eval.hf_bpb: set hf_dir=HF_MODEL_DIR and heldout=HELDOUT_DIR_OR_GLOB")
    groups = evaluate_hf_model(cfg.hf_dir, cfg.heldout, cfg.max_len, cfg.batch_size, cfg.max_documents)
    result = write_report(groups, Path(cfg.output), Path(cfg.hf_dir).name)
    print(Path(cfg.output, "bpb.md").read_text())
    overall = result["all"]["all"]
    print(f"overall: {overall['bpb']:.4f} bits per byte over {overall['documents']} documents; "
          f"report in {cfg.output}")


if __name__ == "__main__":
    main()
