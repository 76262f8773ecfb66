"""Prevention switches: embedding gradient shrink (GLM-130B) and truncated-normal init."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf


def test_embedding_grad_shrink_keeps_value_and_scales_gradient():
    from pretrain.model.teleflm import _shrink_embedding_grad

    torch.manual_seed(0)
    plain, shrunk = torch.nn.Embedding(16, 8), torch.nn.Embedding(16, 8)
    shrunk.load_state_dict(plain.state_dict())
    shrunk.register_forward_hook(_shrink_embedding_grad(0.1))
    ids = torch.tensor([[1, 2, 3, 2]])
    out_plain, out_shrunk = plain(ids), shrunk(ids)
    torch.testing.assert_close(out_plain, out_shrunk)    # forward value unchanged (up to rounding)
    (out_plain ** 2).sum().backward()
    (out_shrunk ** 2).sum().backward()
    torch.testing.assert_close(shrunk.weight.grad, 0.1 * plain.weight.grad)


def test_truncated_normal_init_stays_within_two_sigma():
    from pretrain.model.teleflm import init_method_for

    std = 0.02
    cfg = OmegaConf.create({"init_method_std": std, "truncated_normal_init": True, "use_mup": False})
    weight = torch.empty(512, 512)
    init_method_for(cfg, "matrix")(weight, torch.Generator().manual_seed(0))
    bound = 2 * weight.new_tensor(std) * 1.0001
    assert weight.abs().max() <= bound
    assert weight.abs().max() > 1.9 * std                  # really truncated at 2σ, not narrower
    assert 0.8 * std < weight.std() < std                  # truncation shrinks σ to ~0.88σ
    cfg.truncated_normal_init = False
    init_method_for(cfg, "matrix")(weight, torch.Generator().manual_seed(0))
    assert weight.abs().max() > 3 * std                    # the plain normal has tails
