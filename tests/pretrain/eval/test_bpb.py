"""Bits-per-byte arithmetic on hand-computable cases, and batching that cannot change the answer."""

from __future__ import annotations

import math

import pytest
import torch

from pretrain.eval.bpb import Score, bits_per_byte, document_windows, score_token_documents


def uniform_logits(vocab: int):
    return lambda ids: torch.zeros(ids.shape[0], ids.shape[1], vocab)


def test_uniform_model_costs_log2_vocab_bits_per_token():
    # A document of 4 UTF-8 bytes encoded as 2 tokens + EOD: 3 predictions at ln(8) nats each.
    score = score_token_documents(uniform_logits(8), [([5, 6, 0], 4)], eod_id=0, max_len=16, batch_size=2)
    assert score.tokens == 3 and score.bytes == 4 and score.documents == 1
    assert score.nats == pytest.approx(3 * math.log(8))
    assert score.bits_per_byte == pytest.approx(3 * 3 / 4)  # 2.25 bits per byte
    assert score.perplexity == pytest.approx(8.0)


def test_padded_vocabulary_columns_are_trimmed():
    # 8 real tokens padded to 16 columns: trimming must restore the 8-way uniform cost.
    score = score_token_documents(uniform_logits(16), [([1, 2, 0], 3)], eod_id=0, max_len=8, batch_size=1,
                                  vocab_size=8)
    assert score.nats == pytest.approx(3 * math.log(8))


def test_bits_per_byte_rejects_empty_text():
    with pytest.raises(ValueError, match="positive byte count"):
        bits_per_byte(1.0, 0)


def test_windows_predict_every_token_once_with_previous_token_as_context():
    doc = list(range(1, 11)) + [0]  # 10 text tokens + EOD
    windows = document_windows(doc, eod_id=0, max_len=4)
    targets = [t for _, tgt in windows for t in tgt]
    assert targets == doc
    sequence = [0, *doc]
    offset = 0
    for inputs, tgt in windows:
        assert len(inputs) == len(tgt) <= 4
        assert inputs == sequence[offset:offset + len(inputs)]
        offset += len(tgt)


def test_score_accumulates_exactly():
    a, b = Score(1.0, 2, 3, 1), Score(2.0, 4, 5, 2)
    a.add(b)
    assert (a.nats, a.tokens, a.bytes, a.documents) == (3.0, 6, 8, 3)


def test_batching_and_right_padding_do_not_change_a_causal_models_score():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=4, max_position_embeddings=64)).eval()

    def logits(ids):
        return model(input_ids=ids).logits

    generator = torch.Generator().manual_seed(1)
    docs = [(torch.randint(1, 32, (n,), generator=generator).tolist() + [0], 2 * n) for n in (3, 17, 9, 30)]
    one_by_one = score_token_documents(logits, docs, eod_id=0, max_len=8, batch_size=1)
    batched = score_token_documents(logits, docs, eod_id=0, max_len=8, batch_size=5)
    assert one_by_one.tokens == batched.tokens == sum(len(t) for t, _ in docs)
    assert batched.nats == pytest.approx(one_by_one.nats, rel=1e-5)
