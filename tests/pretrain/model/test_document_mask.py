"""Document-masked attention for packed sequences (``model.document_mask``, issue 20).

A packed training sequence holds several documents separated by EOD. With the mask
(megatron's GPTDataset ``reset_attention_mask``, what ``pretrain/data.py`` asks for),
a token's logits must not change when another document of the same sequence changes;
without it they do (so the test bites). The tiny Tele-FLM at TP1, in this process.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from pretrain.cpu_shims import activate_cpu_shims

EOD = 2
SEQ = 64


@pytest.fixture(scope="module")
def model():
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    from pretrain.model.teleflm import build_model

    activate_cpu_shims()
    if not dist.is_initialized():
        import tempfile

        store = dist.FileStore(tempfile.mktemp(), 1)
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=1)
    model_parallel_cuda_manual_seed(7)
    cfg = OmegaConf.create({
        "model": {"name": "t", "num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_query_groups": 4,
                  "kv_channels": 16, "ffn_hidden_size": 128, "vocab_size": 512, "make_vocab_size_divisible_by": 64,
                  "seq_length": SEQ, "init_method_std": 0.02, "document_mask": True},
        "parallel": {"name": "single", "tensor_model_parallel_size": 1}, "train": {"seed": 7}})
    yield build_model(cfg).eval()
    parallel_state.destroy_model_parallel()


def packed(seed: int, change: slice | None = None) -> torch.Tensor:
    """Three documents: [0, 20) and [20, 40) end in EOD, [40, 64) runs on; ``change`` re-draws a span."""
    tokens = torch.randint(3, 512, (SEQ,), generator=torch.Generator().manual_seed(0))
    if change is not None:
        tokens[change] = torch.randint(3, 512, (change.stop - change.start,),
                                       generator=torch.Generator().manual_seed(seed))
    tokens[19] = tokens[39] = EOD
    return tokens


def logits(model, tokens: torch.Tensor, masked: bool) -> torch.Tensor:
    from megatron.core.datasets.gpt_dataset import _get_ltor_masks_and_position_ids

    mask, _, position_ids = _get_ltor_masks_and_position_ids(tokens, EOD, False, True, False, True)
    with torch.no_grad():
        return model(tokens[None], position_ids[None], mask[None] if masked else None)[0]


def test_a_token_does_not_see_other_documents(model):
    base = packed(0)
    for changed, unaffected in ((slice(0, 19), slice(20, SEQ)), (slice(20, 39), slice(40, SEQ))):
        other = packed(1, changed)
        assert not torch.equal(base[changed], other[changed])
        a, b = logits(model, base, True), logits(model, other, True)
        assert torch.allclose(a[unaffected], b[unaffected], rtol=0, atol=1e-6), (changed, unaffected)
        assert not torch.allclose(a[changed], b[changed])
        # plain causal attention (document_mask off) does see the earlier document
        a, b = logits(model, base, False), logits(model, other, False)
        assert not torch.allclose(a[unaffected], b[unaffected], rtol=0, atol=1e-4)


def test_first_document_is_the_same_with_or_without_the_mask(model):
    """Before the first EOD the document mask is the causal mask."""
    base = packed(0)
    assert torch.allclose(logits(model, base, True)[:20], logits(model, base, False)[:20], rtol=0, atol=1e-6)
