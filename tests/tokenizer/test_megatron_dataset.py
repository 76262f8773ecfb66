"""megatron-core builds its blended GPTDataset straight from our manifest (what the trainer does)."""

from __future__ import annotations

import numpy
import pytest
import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset

from tokenizer.megatron_adapter import SentencePieceMegatronTokenizer

SEQUENCE_LENGTH = 64


def test_adapter_exposes_the_special_ids(encoded, sp):
    adapter = SentencePieceMegatronTokenizer(encoded[2]["tokenizer_model"])
    assert (adapter.eod, adapter.eos, adapter.bos, adapter.pad, adapter.vocab_size) == (2, 2, 1, 0, 3000)
    text = "混合 text 😀\n    code"
    assert adapter.tokenize(text) == sp.encode(text)
    assert adapter.detokenize(numpy.array(sp.encode(text))) == text
    assert adapter.inv_vocab[2] == "</s>" and adapter.vocab["<pad>"] == 0


@pytest.fixture
def single_process_group(tmp_path):
    """The trainer runs inside a process group; megatron's cache writing asks for the rank.

    Tests that build models in this process keep their world of one alive
    (pretrain.scaling.local_world): reuse it rather than initialise a second one."""
    if torch.distributed.is_initialized():
        assert torch.distributed.get_world_size() == 1
        yield
        return
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


def test_blended_gpt_dataset_from_manifest(encoded, tmp_path, single_process_group):
    manifest = encoded[2]
    sources = sorted(manifest["train"])
    prefixes = [manifest["train"][s]["prefix"] for s in sources]
    weights = [manifest["train"][s]["weight"] for s in sources]
    tokenizer = SentencePieceMegatronTokenizer(manifest["tokenizer_model"])
    config = GPTDatasetConfig(
        random_seed=1234, sequence_length=SEQUENCE_LENGTH, blend=(prefixes, weights), split="100,0,0",
        path_to_cache=str(tmp_path / "cache"), tokenizer=tokenizer, reset_position_ids=False,
        reset_attention_mask=False, eod_mask_loss=False, mmap_bin_files=True)
    train, valid, test = BlendedMegatronDatasetBuilder(GPTDataset, [400, 0, 0], lambda: True, config).build()
    assert valid is None and test is None
    assert len(train) >= 400

    documents = {p: IndexedDataset(p) for p in prefixes}
    joined = {p: "," + ",".join(str(t) for d in range(len(ds)) for t in ds[d].tolist()) + ","
              for p, ds in documents.items()}
    for index in range(0, 400, 7):
        sample = train[index]
        tokens, labels = sample["tokens"], sample["labels"]
        assert tokens.shape == (SEQUENCE_LENGTH,) and torch.equal(tokens[1:], labels[:-1])
        assert int(tokens.max()) < manifest["vocab_size"]
        window = "," + ",".join(str(t) for t in tokens.tolist() + labels[-1:].tolist()) + ","
        # GPTDataset samples are windows over shuffled documents of one source, EOD after each:
        # every piece between EODs is a contiguous run of one document's tokens.
        dataset_id = int(train.dataset_index[index])
        pieces = [piece for piece in window.split(f",{tokenizer.eod},") if piece.strip(",")]
        assert all(f",{piece.strip(',')}," in joined[prefixes[dataset_id]] for piece in pieces)

    # The blend follows the manifest weights.
    counts = numpy.bincount(train.dataset_index[:400], minlength=len(sources)) / 400
    assert counts == pytest.approx(numpy.array(weights) / sum(weights), abs=0.03)
