"""The trained model has the options the rest of the stack relies on."""

from __future__ import annotations

import json

import pytest
from sentencepiece import sentencepiece_model_pb2

from tokenizer.config import ConfigError, validate_config
from tokenizer.sample import copies_of, inclusion_rates, split_into_chunks
from tokenizer.special_tokens import SpecialTokens

BYTE, CONTROL, UNKNOWN = 6, 3, 2


@pytest.fixture(scope="module")
def proto(trained):
    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString((trained[1] / "tokenizer.model").read_bytes())
    return model


def test_trainer_options_are_recorded_in_the_model(proto, trained):
    cfg = trained[0]
    trainer, normalizer = proto.trainer_spec, proto.normalizer_spec
    assert len(proto.pieces) == cfg.tokenizer.vocab_size
    assert trainer.model_type == sentencepiece_model_pb2.TrainerSpec.BPE
    assert trainer.byte_fallback and trainer.split_digits and trainer.allow_whitespace_only_pieces
    assert normalizer.name == "identity" and not normalizer.remove_extra_whitespaces
    assert not normalizer.add_dummy_prefix and normalizer.escape_whitespaces


def test_special_token_ids(proto, sp, trained):
    special = SpecialTokens.from_config(trained[0].tokenizer.special_tokens)
    assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert [p.piece for p in proto.pieces[:4]] == ["<pad>", "<s>", "</s>", "<unk>"]
    assert proto.pieces[3].type == UNKNOWN
    reserved = [p for p in proto.pieces[4:4 + special.num_reserved]]
    assert [p.piece for p in reserved] == [f"<|reserved_{i}|>" for i in range(special.num_reserved)]
    assert all(p.type == CONTROL for p in proto.pieces[:3] + reserved)
    assert special.ids()["eod"] == 2 and special.ids()["reserved_15"] == 19
    # Control symbols are never produced from text, even when the text spells them.
    assert not set(sp.encode("<s> </s> <pad> <|reserved_0|>")) & set(range(4 + special.num_reserved))


def test_byte_fallback_covers_the_256_bytes_and_unseen_characters(proto, sp):
    byte_pieces = [p.piece for p in proto.pieces if p.type == BYTE]
    assert byte_pieces == [f"<0x{i:02X}>" for i in range(256)]
    rare = "\U0002000b\U0001f9ec"  # a CJK Extension B ideograph and an emoji absent from the corpus
    pieces = sp.encode(rare, out_type=str)
    assert pieces == ["<0xF0>", "<0xA0>", "<0x80>", "<0x8B>", "<0xF0>", "<0x9F>", "<0xA7>", "<0xAC>"]
    assert sp.unk_id() not in sp.encode(rare)


def test_digits_are_split_and_whitespace_runs_kept(proto, sp):
    assert sp.encode("2026 12345", out_type=str)[-5:] == list("12345")
    multi_digit = [p.piece for p in proto.pieces
                   if p.type == 1 and any(c.isdigit() for c in p.piece) and len(p.piece) > 1]
    assert multi_digit == []
    assert any(set(p.piece) == {"\u2581"} and len(p.piece) >= 4 for p in proto.pieces)  # indentation pieces
    code = "def f(x):\n\tif x:\n        return  x\n"
    assert sp.decode(sp.encode(code)) == code


def test_sample_follows_the_mixture_weights(trained):
    stats = json.loads((trained[1] / "train" / "sample_stats.json").read_text())
    mixture = json.loads(open(f"{trained[0].input}/mixture.json").read())["sources"]
    total_weight = sum(e["weight"] for e in mixture.values())
    for source, entry in mixture.items():
        expected = entry["weight"] / total_weight
        assert stats["by_source"][source]["share"] == pytest.approx(expected, abs=0.08), source
    assert stats["bytes"] == pytest.approx(stats["target_bytes"], rel=0.25)
    assert set(stats["by_lang"]) == {"en", "zh", "de", "fr", "es", "ja"}


def test_sampling_decisions_depend_only_on_seed_and_id():
    rates = inclusion_rates({"a": {"weight": 3, "bytes": 100}, "b": {"weight": 1, "bytes": 1000}}, 200)
    assert rates == pytest.approx({"a": 1.5, "b": 0.05})
    draws = [copies_of(f"doc-{i}", 7, 1.5) for i in range(4000)]
    assert draws == [copies_of(f"doc-{i}", 7, 1.5) for i in range(4000)]
    assert set(draws) == {1, 2} and sum(draws) / len(draws) == pytest.approx(1.5, abs=0.05)
    assert draws != [copies_of(f"doc-{i}", 8, 1.5) for i in range(4000)]


def test_chunks_cover_the_document_exactly():
    text = "line one\n" * 300 + "x" * 5000
    chunks = list(split_into_chunks(text, 1000))
    assert "".join(chunks) == text and max(map(len, chunks)) <= 1000
    assert all(c.endswith("\n") for c in chunks[:2])


@pytest.mark.parametrize("override, key", [
    ("tokenizer.vocab_size=100", "tokenizer.vocab_size"),
    ("+tokenizer.training.no_such_option=1", "tokenizer.training.no_such_option"),
    ("tokenizer.sample.bytes=0", "tokenizer.sample.bytes"),
    ("steps=[train,fly]", "steps"),
    ("tokenizer.training.max_sentence_length=100", "tokenizer.training.max_sentence_length"),
])
def test_bad_config_names_the_key(helpers, data_dir, tmp_path, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(helpers.make_config(data_dir, tmp_path, override))


def test_bad_input_names_the_file(helpers, tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "mixture.json").write_text('{"sources": {"web": {"weight": 1, "bytes": 10}}}')
    with pytest.raises(ValueError, match="no part-\\*.parquet files in .*shards"):
        validate_config(helpers.make_config(tmp_path, tmp_path / "out"))
    (tmp_path / "mixture.json").write_text('{"web": 1}')
    with pytest.raises(ValueError, match="mixture.json"):
        validate_config(helpers.make_config(tmp_path, tmp_path / "out"))


def test_52b_config_composes_to_the_tele_flm_tokenizer(repo_root, data_dir, tmp_path):
    from hydra import compose, initialize_config_dir

    from tokenizer.train import trainer_options

    with initialize_config_dir(version_base=None, config_dir=str(repo_root / "configs")):
        cfg = compose("tokenizer", overrides=[f"input={data_dir}", f"output={tmp_path}", "tokenizer=52b"])
    assert validate_config(cfg) == ["train", "evaluate", "encode"]
    options = trainer_options(cfg)
    assert options["vocab_size"] == 80000 and options["input_sentence_size"] == 12_000_000
    assert options["byte_fallback"] and options["split_digits"] and options["normalization_rule_name"] == "identity"
    assert cfg.tokenizer.encode.keep_partials is False
    from tokenizer.indexed_writer import token_dtype
    import numpy

    assert token_dtype(options["vocab_size"]) is numpy.int32
