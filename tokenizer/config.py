"""Check the configuration and the input before any work starts, naming the bad key or file."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf
from sentencepiece.sentencepiece_model_pb2 import NormalizerSpec, TrainerSpec

from tokenizer.data_source import list_shards, read_mixture
from tokenizer.special_tokens import SpecialTokens

STEPS = ("train", "evaluate", "encode")


# Trainer command-line flags that are not proto fields of the same name.
TRAINER_FLAGS = {"minloglevel", "normalization_rule_name", "normalization_rule_tsv", "denormalization_rule_tsv"}


class ConfigError(ValueError):
    pass


def _require_positive(cfg, dotted: str) -> None:
    value = OmegaConf.select(cfg, dotted)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{dotted} must be a positive integer, got {value!r}")


def validate_config(cfg) -> list[str]:
    """Return the steps to run, in pipeline order; raise ConfigError/DataDirError on bad settings."""
    for key in ("input", "output"):
        if OmegaConf.is_missing(cfg, key) or not cfg[key]:
            raise ConfigError(f"{key}=... is required (python -m tokenizer input=DATA_DIR output=TOK_DIR)")
    steps = list(cfg.steps)
    unknown = [s for s in steps if s not in STEPS]
    if unknown or not steps:
        raise ConfigError(f"steps: unknown {unknown or 'empty list'}; choose from {list(STEPS)}")
    tok = cfg.tokenizer
    for dotted in ("tokenizer.vocab_size", "tokenizer.sample.bytes", "tokenizer.sample.chunk_chars",
                   "tokenizer.sample.batch_size", "tokenizer.encode.batch_size",
                   "tokenizer.evaluate.max_bytes_per_lang"):
        _require_positive(cfg, dotted)
    special = SpecialTokens.from_config(tok.special_tokens)
    if special.num_reserved < 0:
        raise ConfigError("tokenizer.special_tokens.num_reserved must be >= 0")
    if tok.training.get("byte_fallback") and tok.vocab_size <= 256 + special.count:
        raise ConfigError(f"tokenizer.vocab_size={tok.vocab_size} leaves no room beside 256 byte pieces and "
                          f"{special.count} special tokens")
    if tok.training.get("max_sentence_length", 4192) < 4 * tok.sample.chunk_chars:
        raise ConfigError("tokenizer.training.max_sentence_length (bytes) must be >= 4 * tokenizer.sample.chunk_chars "
                          "or the trainer silently drops long chunks")
    known = set(TrainerSpec.DESCRIPTOR.fields_by_name) | set(NormalizerSpec.DESCRIPTOR.fields_by_name)
    unknown_options = sorted(set(tok.training) - known - TRAINER_FLAGS)
    if unknown_options:
        raise ConfigError(f"tokenizer.training.{unknown_options[0]} is not a SentencePiece trainer option")
    if tok.encode.max_shards is not None and int(tok.encode.max_shards) < 0:
        raise ConfigError("tokenizer.encode.max_shards must be null or >= 0")
    if not Path(cfg.input).is_dir():
        raise ConfigError(f"input: {cfg.input} is not a directory")
    read_mixture(cfg.input)
    if "train" in steps or "encode" in steps:
        list_shards(cfg.input, "shards")
    if "evaluate" in steps or "encode" in steps:
        list_shards(cfg.input, "heldout")
    return [s for s in STEPS if s in steps]
