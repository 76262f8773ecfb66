"""The long-context preset's must-show (issue 20 item 3), scaled down to CPU: a model trained with
YaRN (``model.rope_scaling``) at 4x its original context, exported by ``launch.export_hf`` and
scored by ``pretrain.eval.hf_bpb`` (stock transformers), has the trainer's final held-out BPB per
language to 4 decimals.

Everything is real: a SentencePiece tokenizer trained here, held-out text in two languages
encoded into indexed datasets the way the tokenizer stage lays them out, a ``python -m pretrain``
run, the export, and transformers' own YaRN. The same export with the YaRN terms taken out of
``config.json`` scores differently, so the comparison sees the rotary scaling.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch

from tests.helpers.launch import REPO_ROOT
from tests.pretrain.test_cli import clean_env, pretrain_cmd

pytestmark = pytest.mark.timeout(600)

ORIGINAL, FACTOR = 32, 4          # the preset's 4096 x 8, scaled down: windows of 128 tokens
WORDS = {
    "en": "the quick brown fox jumps over a lazy dog while seven old sailors count their silver coins".split(),
    "fr": "le renard brun saute par dessus un chien paresseux pendant que sept marins comptent leurs pièces".split(),
}
YARN = [f"model.seq_length={ORIGINAL * FACTOR}", "model.rope_scaling.type=yarn",
        f"model.rope_scaling.factor={float(FACTOR)}",
        f"model.rope_scaling.original_max_position_embeddings={ORIGINAL}"]


def texts(lang: str, count: int, rng: random.Random) -> list[str]:
    """Documents of 60-140 words: most are longer than the original context of 32 tokens."""
    words = WORDS[lang]
    out = []
    for _ in range(count):
        start = rng.randrange(len(words))
        out.append(" ".join(words[(start + i + (rng.random() < 0.15)) % len(words)]
                            for i in range(rng.randint(60, 140))))
    return out


def train_tokenizer(corpus: list[str], out: Path) -> Path:
    """The tokenizer stage's SentencePiece settings (identity normalisation, byte fallback, EOS 2)."""
    (out / "text.txt").write_text("\n".join(corpus))
    spm.SentencePieceTrainer.train(
        input=str(out / "text.txt"), model_prefix=str(out / "tokenizer"), vocab_size=320, model_type="bpe",
        byte_fallback=True, normalization_rule_name="identity", add_dummy_prefix=False,
        remove_extra_whitespaces=False, pad_id=0, bos_id=1, eos_id=2, unk_id=3, minloglevel=2)
    return out / "tokenizer.model"


def write_indexed(prefix: Path, docs: list[str], sp: spm.SentencePieceProcessor) -> dict:
    """One indexed dataset of ``encode(text) + [eod]`` documents, with the UTF-8 bytes BPB divides by."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix.parent.mkdir(parents=True, exist_ok=True)
    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.uint16)
    tokens = 0
    for text in docs:
        ids = sp.encode(text) + [sp.eos_id()]
        tokens += len(ids)
        builder.add_document(torch.tensor(ids, dtype=torch.long), [len(ids)])
    builder.finalize(str(prefix) + ".idx")
    return {"prefix": str(prefix), "tokens": tokens, "documents": len(docs),
            "bytes": sum(len(t.encode("utf-8")) for t in docs)}


def make_data(root: Path) -> tuple[Path, Path]:
    """``root/indexed`` (manifest + train and held-out sets by language) and ``root/heldout.jsonl``."""
    rng = random.Random(0)
    train = {lang: texts(lang, 150, rng) for lang in WORDS}
    heldout = {lang: texts(lang, 12, rng) for lang in WORDS}
    model = train_tokenizer([t for docs in train.values() for t in docs], root)
    sp = spm.SentencePieceProcessor(model_file=str(model))
    indexed = root / "indexed"
    manifest = {
        "vocab_size": sp.get_piece_size(), "eod_id": sp.eos_id(), "pad_id": sp.pad_id(), "bos_id": sp.bos_id(),
        "tokenizer_model": str(model), "dtype": "uint16",
        "train": {lang: {**write_indexed(indexed / "train" / lang, docs, sp), "weight": 0.5}
                  for lang, docs in train.items()},
        "heldout": {"by_lang": {lang: write_indexed(indexed / "heldout" / "by_lang" / lang, docs, sp)
                                for lang, docs in heldout.items()}},
    }
    manifest["heldout"]["by_source"] = {"web": write_indexed(indexed / "heldout" / "by_source" / "web",
                                                             [t for docs in heldout.values() for t in docs], sp)}
    (indexed / "manifest.json").write_text(json.dumps(manifest, indent=2))
    records = root / "heldout.jsonl"
    records.write_text("".join(json.dumps({"text": t, "lang": lang, "source": "web"}) + "\n"
                               for lang, docs in heldout.items() for t in docs))
    return indexed, records


def run(args: list[str]) -> None:
    out = subprocess.run(args, cwd=REPO_ROOT, env=clean_env(), capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]


def hf_bpb_by_lang(hf_dir: Path, records: Path) -> dict[str, tuple[float, int]]:
    from pretrain.eval.hf_bpb import evaluate_hf_model

    groups = evaluate_hf_model(str(hf_dir), str(records), max_len=None, batch_size=8)
    return {lang: (score.bits_per_byte, score.tokens) for lang, score in groups["lang"].items()}


def test_yarn_export_has_the_trainers_heldout_bpb_per_language(tmp_path):
    indexed, records = make_data(tmp_path)
    run_dir, hf_dir = tmp_path / "run", tmp_path / "hf"
    run(pretrain_cmd(indexed, run_dir, *YARN, "train.train_iters=30", "train.lr_decay_iters=30", "train.lr=1e-2", "train.min_lr=1e-3",
                     "train.eval_interval=0", "checkpoint.save_interval=30", "train.heldout_max_documents=null"))
    run([sys.executable, "-m", "launch.export_hf", f"checkpoint={run_dir}", f"output={hf_dir}", "dtype=float32"])
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == "yarn"
    assert config["rope_parameters"]["original_max_position_embeddings"] == ORIGINAL
    assert config["max_position_embeddings"] == ORIGINAL * FACTOR

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trainer = [r for r in rows if r.get("event") == "heldout"][-1]
    assert trainer["step"] == 30
    hf = hf_bpb_by_lang(hf_dir, records)
    assert sorted(hf) == sorted(trainer["by_lang"]) == ["en", "fr"]
    for lang, row in trainer["by_lang"].items():
        print(f"\n{lang}: trainer BPB {row['bpb']:.6f}, HF export {hf[lang][0]:.6f} over {row['tokens']} tokens")
        assert hf[lang][1] == row["tokens"], lang
        assert abs(hf[lang][0] - row["bpb"]) < 5e-5, (lang, hf[lang][0], row["bpb"])  # equal to 4 decimals
        print("  loss by position: " + ", ".join(f"[{b['start']},{b['end']}) {b['loss']:.3f}"
                                                 for b in row["positions"]))

    # The comparison sees the scaling: without YaRN's attention factor, or without YaRN, it fails.
    for name, parameters in (("no_attention_factor", {**config["rope_parameters"], "attention_factor": 1.0}),
                             ("no_yarn", {"rope_type": "default", "rope_theta": config["rope_parameters"]["rope_theta"]})):
        other = tmp_path / name
        shutil.copytree(hf_dir, other)
        (other / "config.json").write_text(json.dumps({**config, "rope_parameters": parameters}))
        changed = hf_bpb_by_lang(other, records)
        print(f"{name}: " + ", ".join(f"{lang} {changed[lang][0]:.6f}" for lang in sorted(changed)))
        assert all(abs(changed[lang][0] - hf[lang][0]) > 1e-3 for lang in hf), (name, changed, hf)
