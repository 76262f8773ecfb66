"""RoPE scaling (``model.rope_scaling``: linear position interpolation, YaRN) and a RoPE base
change, trainer vs the HF export's ``rope_parameters`` (issue 20).

In this process: the tiny Tele-FLM at TP1 with each scaling, its weights mapped to a stock
``LlamaForCausalLM`` the way ``launch.export_hf`` maps a checkpoint, configured by
``launch.export_hf.hf_config``; logits over a sequence 4x the original context agree.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from pretrain.cpu_shims import activate_cpu_shims

SEQ = 64


def model_cfg(rope_scaling: dict, rotary_base: int = 10000):
    return OmegaConf.create({
        "model": {"name": "t", "num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_query_groups": 2,
                  "kv_channels": 16, "ffn_hidden_size": 128, "vocab_size": 512, "make_vocab_size_divisible_by": 64,
                  "seq_length": SEQ, "init_method_std": 0.05, "rotary_base": rotary_base,
                  "input_mult": 1.5, "output_mult": 0.5, "rope_scaling": rope_scaling},
        "parallel": {"name": "single", "tensor_model_parallel_size": 1}, "train": {"seed": 3}})


@pytest.fixture(scope="module")
def model_parallel():
    import tempfile

    import torch.distributed as dist
    from megatron.core import parallel_state

    activate_cpu_shims()
    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.FileStore(tempfile.mktemp(), 1), rank=0, world_size=1)
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=1)
    yield
    parallel_state.destroy_model_parallel()


def to_hf(model, cfg):
    from transformers import LlamaForCausalLM

    from launch.export_hf import hf_config, shapes_from_run_config
    from launch.weight_mapping import embedding_to_hf, layer_to_hf, output_layer_to_hf

    sd = {k: v for k, v in model.state_dict().items() if "_extra_state" not in k}
    s = shapes_from_run_config(cfg, sd["embedding.word_embeddings.weight"].shape[0], trim_vocab=True)
    hf = {"model.embed_tokens.weight": embedding_to_hf(sd["embedding.word_embeddings.weight"], s),
          "model.norm.weight": sd["decoder.final_layernorm.weight"],
          "lm_head.weight": output_layer_to_hf(sd["output_layer.weight"], s)}
    for i in range(s.num_layers):
        p = f"decoder.layers.{i}."
        hf.update(layer_to_hf({"attn_norm": sd[p + "input_layernorm.weight"],
                               "qkv": sd[p + "self_attention.linear_qkv.weight"],
                               "proj": sd[p + "self_attention.linear_proj.weight"],
                               "mlp_norm": sd[p + "pre_mlp_layernorm.weight"],
                               "fc1": sd[p + "mlp.linear_fc1.weight"], "fc2": sd[p + "mlp.linear_fc2.weight"]}, i, s))
    config = hf_config(cfg, s, torch.float32, {})
    hf_model = LlamaForCausalLM(config).eval()
    missing, unexpected = hf_model.load_state_dict(hf, strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    return hf_model, config


@pytest.mark.parametrize("rope_scaling, base", [
    ({"type": "none"}, 10000),
    ({"type": "none"}, 500000),                                   # a base change
    ({"type": "linear", "factor": 4.0}, 10000),
    ({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}, 10000),
])
def test_hf_export_rope_parameters_reproduce_the_trainer_logits(model_parallel, rope_scaling, base):
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    from pretrain.model.teleflm import build_model

    model_parallel_cuda_manual_seed(3)
    cfg = model_cfg(rope_scaling, base)
    model = build_model(cfg).eval()
    hf_model, config = to_hf(model, cfg)
    assert config.rope_parameters["rope_type"] == {"none": "default"}.get(rope_scaling["type"], rope_scaling["type"])
    assert config.rope_parameters["rope_theta"] == base
    tokens = torch.randint(0, 512, (2, SEQ), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(tokens, torch.arange(SEQ).expand(2, SEQ), None)[..., :512]
        theirs = hf_model(tokens).logits
    diff = (ours - theirs).abs().max().item()
    assert diff < 1e-4, f"{rope_scaling}: max |HF - megatron| = {diff:.3e}"
    assert ours.std() > 0.05


def test_scaling_changes_the_model_beyond_the_original_context(model_parallel):
    """The parity above is not vacuous: YaRN's logits differ from plain RoPE's."""
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    from pretrain.model.teleflm import build_model

    tokens = torch.randint(0, 512, (1, SEQ), generator=torch.Generator().manual_seed(1))
    out = []
    for scaling in ({"type": "none"}, {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}):
        model_parallel_cuda_manual_seed(3)
        with torch.no_grad():
            out.append(build_model(model_cfg(scaling)).eval()(tokens, torch.arange(SEQ)[None], None))
    assert (out[0] - out[1]).abs().max() > 1e-3


def test_validation_names_the_rope_scaling_key():
    from pretrain.config.schema import typed
    from pretrain.config.validate import misc_errors

    def errors(scaling):
        return misc_errors(typed(model_cfg(scaling), strict=False))

    assert errors({"type": "ntk"}) == ["model.rope_scaling.type='ntk': use one of ('none', 'linear', 'yarn')"]
    assert "model.rope_scaling.factor=1.0 must be > 1" in errors({"type": "yarn"})[0]
    assert errors({"type": "yarn", "factor": 8.0}) == []
