"""Train the SentencePiece BPE model on a mixture-weighted sample of the training shards.

SentencePiece rather than HF `tokenizers` training: it gives byte fallback, digit
splitting and whitespace-preserving pieces in one well-trodden trainer (the Llama and
Tele-FLM lineage), and its .model file is what megatron-core's SentencePiece tokenizer
loads; the HF export is derived from it afterwards with exact id parity.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import sentencepiece as spm
from omegaconf import OmegaConf

from tokenizer.sample import draw_training_sample, iter_sample
from tokenizer.special_tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID, SpecialTokens

# Options the code sets itself; the config's training: block must not override them.
OWNED_OPTIONS = {"vocab_size", "model_prefix", "model_writer", "sentence_iterator", "input", "pad_id", "bos_id",
                 "eos_id", "unk_id", "pad_piece", "bos_piece", "eos_piece", "unk_piece", "control_symbols",
                 "user_defined_symbols"}


def trainer_options(cfg) -> dict:
    """The exact keyword arguments handed to SentencePieceTrainer.train (minus I/O)."""
    special = SpecialTokens.from_config(cfg.tokenizer.special_tokens)
    options = OmegaConf.to_container(cfg.tokenizer.training, resolve=True)
    clash = sorted(OWNED_OPTIONS & set(options))
    if clash:
        raise ValueError(f"tokenizer.training.{clash[0]} is set by the code (see tokenizer.special_tokens / vocab_size)")
    options.update(
        vocab_size=int(cfg.tokenizer.vocab_size),
        pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, unk_id=UNK_ID,
        pad_piece=special.pad, bos_piece=special.bos, eos_piece=special.eos, unk_piece=special.unk,
        control_symbols=special.reserved,
    )
    return options


def train_tokenizer(cfg) -> Path:
    """Sample, train, and write TOK_DIR/tokenizer.model (+ .vocab) and train/sample_stats.json."""
    out_dir = Path(cfg.output)
    options = trainer_options(cfg)
    started = time.time()
    sample_path = out_dir / "train" / "sample.jsonl"
    stats = draw_training_sample(cfg, sample_path)
    prefix = out_dir / "tokenizer"
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter_sample(sample_path), model_prefix=str(prefix), **options)
    except RuntimeError as error:
        raise RuntimeError(f"SentencePiece training failed (tokenizer.vocab_size={options['vocab_size']}; with "
                           f"byte_fallback it must exceed 256 + specials + distinct characters): {error}") from error
    stats["seconds"] = round(time.time() - started, 2)
    stats["trainer_options"] = options
    (out_dir / "train" / "sample_stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False))
    return prefix.with_suffix(".model")
