"""Tokenizers to compare against, all available offline.

Real references come from the `mistral-common` wheel, which ships Mistral's tokenizer
files inside the package (no hub download): `tokenizer.model.v1` (SentencePiece BPE, 32k,
the Llama/Mistral-7B generation) and `tekken_240911.json` (Tekken, a tiktoken-style
byte-level BPE with 131k entries, the GPT-4o generation).  The files are located without
importing mistral_common, whose import needs extra packages we do not use.
UTF-8 bytes and characters are baselines for context (1 token per byte / per character).
"""

from __future__ import annotations

import base64
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import sentencepiece as spm

Counter = Callable[[str], int]  # text -> number of tokens


def mistral_data_file(name: str) -> Path:
    spec = importlib.util.find_spec("mistral_common")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("tokenizer.evaluate.references needs the 'mistral-common' package "
                                  "(pip install mistral-common) for the Mistral reference tokenizers")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer.evaluate.references: {path} missing from mistral-common")
    return path


def sentencepiece_counter(model_path: str | Path) -> Counter:
    processor = spm.SentencePieceProcessor(model_file=str(model_path))
    return lambda text: len(processor.encode(text))


def tekken_counter() -> Counter:
    """Tekken's byte-level BPE through tiktoken (the same engine mistral-common uses)."""
    import tiktoken

    data = json.loads(mistral_data_file("tekken_240911.json").read_text())
    config = data["config"]
    inner_vocab = config["default_vocab_size"] - config["default_num_special_tokens"]
    ranks = {base64.b64decode(entry["token_bytes"]): entry["rank"] for entry in data["vocab"][:inner_vocab]}
    encoding = tiktoken.Encoding(name="tekken_240911", pat_str=config["pattern"], mergeable_ranks=ranks,
                                 special_tokens={})
    return lambda text: len(encoding.encode_ordinary(text))


REFERENCES: dict[str, tuple[str, Callable[[], Counter]]] = {
    "mistral_v1": ("Mistral v1 SentencePiece BPE, 32k (mistral-common)",
                   lambda: sentencepiece_counter(mistral_data_file("tokenizer.model.v1"))),
    "mistral_tekken": ("Mistral Tekken byte-level BPE, 131k (mistral-common, tiktoken)", tekken_counter),
    "utf8_bytes": ("baseline: one token per UTF-8 byte", lambda: (lambda text: len(text.encode("utf-8")))),
    "characters": ("baseline: one token per character", lambda: (lambda text: len(text))),
}


def load_references(names) -> dict[str, Counter]:
    """Build every requested counter up front so a missing package fails before any work."""
    unknown = [name for name in names if name not in REFERENCES]
    if unknown:
        raise ValueError(f"tokenizer.evaluate.references: unknown {unknown}; choose from {sorted(REFERENCES)}")
    return {name: REFERENCES[name][1]() for name in names}
