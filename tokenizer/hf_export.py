"""Export the SentencePiece model as a Hugging Face fast tokenizer with identical ids.

transformers' own conversion of a bare tokenizer.model picks Llama-style pre-tokenization
(dummy prefix, Metaspace splitting) whose ids differ from our SentencePiece model, so the
tokenizer.json is built here piece by piece instead:
  * BPE model with SentencePiece's vocabulary (same ids) and byte fallback;
  * merges = every split of a piece into two pieces, ranked by the merged piece's id,
    which reproduces SentencePiece's score-ordered (score = -id) greedy merging;
  * normalizer: only the space -> U+2581 escape (identity normalization, no dummy prefix);
  * special tokens registered but never matched inside text (split_special_tokens), as
    SentencePiece never produces control symbols from text.
`AutoTokenizer.from_pretrained(out_dir)` then loads tokenizer.json and encodes exactly
like SentencePiece (tests/tokenizer/test_hf_parity.py).
"""

from __future__ import annotations

from pathlib import Path

from sentencepiece import sentencepiece_model_pb2
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
from transformers import PreTrainedTokenizerFast

SPACE_MARK = "\u2581"
NORMAL, UNKNOWN, CONTROL = 1, 2, 3  # sentencepiece ModelProto.SentencePiece.Type


def load_proto(spm_model_path: str | Path) -> sentencepiece_model_pb2.ModelProto:
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(spm_model_path).read_bytes())
    return proto


def bpe_merges(proto: sentencepiece_model_pb2.ModelProto) -> list[tuple[str, str]]:
    """All (left, right) splits of normal pieces into normal pieces, in SentencePiece's priority order."""
    vocab = {piece.piece: index for index, piece in enumerate(proto.pieces)}
    normal = {piece.piece for piece in proto.pieces if piece.type == NORMAL}
    ranked = []
    for index, piece in enumerate(proto.pieces):
        text = piece.piece
        if piece.type != NORMAL or len(text) < 2:
            continue
        for cut in range(1, len(text)):
            left, right = text[:cut], text[cut:]
            if left in normal and right in normal:
                ranked.append((index, vocab[left], vocab[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def build_fast_tokenizer(spm_model_path: str | Path) -> PreTrainedTokenizerFast:
    proto = load_proto(spm_model_path)
    spec = proto.normalizer_spec
    if spec.name != "identity" or spec.add_dummy_prefix or spec.remove_extra_whitespaces:
        raise ValueError(f"{spm_model_path}: HF export needs identity normalization without dummy prefix "
                         f"(got name={spec.name}, add_dummy_prefix={spec.add_dummy_prefix}, "
                         f"remove_extra_whitespaces={spec.remove_extra_whitespaces})")
    if proto.trainer_spec.model_type != 2:
        raise ValueError(f"{spm_model_path}: only BPE models are exported (model_type={proto.trainer_spec.model_type})")
    vocab = {piece.piece: index for index, piece in enumerate(proto.pieces)}
    unk = proto.pieces[proto.trainer_spec.unk_id].piece
    backend = Tokenizer(models.BPE(vocab=vocab, merges=bpe_merges(proto), unk_token=unk,
                                   byte_fallback=proto.trainer_spec.byte_fallback, fuse_unk=True))
    backend.normalizer = normalizers.Replace(" ", SPACE_MARK)
    backend.decoder = decoders.Sequence([decoders.Replace(SPACE_MARK, " "), decoders.ByteFallback(), decoders.Fuse()])
    specials = [piece.piece for piece in proto.pieces if piece.type in (UNKNOWN, CONTROL)]
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    backend.encode_special_tokens = True

    def piece(index: int) -> str | None:
        return proto.pieces[index].piece if index >= 0 else None

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=piece(proto.trainer_spec.bos_id), eos_token=piece(proto.trainer_spec.eos_id),
        pad_token=piece(proto.trainer_spec.pad_id), unk_token=unk,
        split_special_tokens=True, add_bos_token=False, add_eos_token=False,
        clean_up_tokenization_spaces=False,
    )


def save_hf_tokenizer(spm_model_path: str | Path, out_dir: str | Path) -> None:
    """Write tokenizer.json + tokenizer_config.json into out_dir (e.g. next to an exported model)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    build_fast_tokenizer(spm_model_path).save_pretrained(str(out_dir))
