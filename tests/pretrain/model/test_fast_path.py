"""The capability function: the flags a CUDA + TransformerEngine node gets, and a CPU node's.

No GPU is needed: :class:`Machine` describes the node, so every branch is checked here.
"""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from pretrain.model.fast_path import FUSION_FLAGS, Machine, choose_fast_path
from pretrain.model.teleflm import transformer_config_from
from tests.pretrain.train.trainer_worker import compose

H100 = Machine(cuda=True, transformer_engine=True, compute_capability=(9, 0))
A800 = Machine(cuda=True, transformer_engine=True, compute_capability=(8, 0))
BROKEN_TE = Machine(cuda=True, transformer_engine=False,
                    transformer_engine_error="ImportError: libcudnn.so.9: cannot open shared object file")
CPU = Machine(cuda=False, transformer_engine=False)

# Megatron-LM's arguments.py: each fusion is on unless --no-<fusion> is passed; the
# cross-entropy fusion is the one opt-in (--cross-entropy-loss-fusion).
MEGATRON_LM_DEFAULTS = {
    "bias_activation_fusion": True, "bias_dropout_fusion": True, "masked_softmax_fusion": True,
    "apply_rope_fusion": True, "persist_layer_norm": True, "gradient_accumulation_fusion": True,
    "cross_entropy_loss_fusion": False,
}


def cfg(*overrides: str):
    return compose(["model=tiny", *overrides])


def test_cuda_with_transformer_engine_gets_megatron_lm_defaults():
    path = choose_fast_path(cfg("parallel=tp2pp2dp2", "parallel.use_distributed_optimizer=true"), H100)
    assert path.spec == "transformer_engine" and path.attention == "te"
    # persist_layer_norm is apex's kernel (TE fuses the norm into its linears); everything else as Megatron-LM
    expected = dict(MEGATRON_LM_DEFAULTS, persist_layer_norm=False)
    assert path.fusions == expected
    assert set(path.fusions) == set(FUSION_FLAGS)
    assert path.overlap_grad_reduce and path.overlap_param_gather and path.grad_reduce_in_fp32
    assert path.fp8 is None and not path.tp_comm_overlap


def test_apex_adds_the_persistent_layer_norm():
    machine = Machine(cuda=True, transformer_engine=True, apex=True, compute_capability=(9, 0))
    assert choose_fast_path(cfg(), machine).fusions == MEGATRON_LM_DEFAULTS


def test_cpu_machine_gets_the_local_spec_and_no_fusions():
    path = choose_fast_path(cfg("parallel=tp2pp2dp2", "parallel.use_distributed_optimizer=true"), CPU)
    assert path.spec == "local" and path.attention == "sdpa"
    assert not any(path.fusions.values())
    assert not path.overlap_param_gather          # null: on only where a GPU makes it pay
    config = transformer_config_from(cfg(), path)  # and megatron accepts the flags on CPU
    assert not config.gradient_accumulation_fusion and not config.apply_rope_fusion


def test_broken_transformer_engine_on_cuda_is_an_error_unless_local_is_asked_for():
    with pytest.raises(RuntimeError, match=r"train.gpu.spec=auto.*libcudnn.so.9.*train.gpu.spec=local"):
        choose_fast_path(cfg(), BROKEN_TE)
    path = choose_fast_path(cfg("train.gpu.spec=local"), BROKEN_TE)
    assert path.spec == "local" and path.fusions["bias_activation_fusion"]
    assert not path.fusions["gradient_accumulation_fusion"]   # needs TE or apex
    with pytest.raises(RuntimeError, match="train.gpu.spec=transformer_engine"):
        choose_fast_path(cfg("train.gpu.spec=transformer_engine"), CPU)


def test_fp8_needs_hopper_bf16_and_te():
    path = choose_fast_path(cfg("train.bf16=true", "train.gpu.fp8=hybrid"), H100)
    assert path.transformer_kwargs()["fp8"] == "hybrid" and path.transformer_kwargs()["fp8_recipe"] == "delayed"
    with pytest.raises(ValueError, match=r"train.gpu.fp8=hybrid.*\(8, 0\)"):
        choose_fast_path(cfg("train.bf16=true", "train.gpu.fp8=hybrid"), A800)
    with pytest.raises(ValueError, match="train.bf16=true"):
        choose_fast_path(cfg("train.gpu.fp8=hybrid"), H100)
    with pytest.raises(ValueError, match="train.gpu.fp8 must be one of"):
        choose_fast_path(cfg("train.gpu.fp8=e5m2"), H100)


def test_tp_comm_overlap_and_bf16_grad_reduce_options():
    tp_sp = ["parallel=tp2", "parallel.sequence_parallel=true", "train.gpu.tp_comm_overlap=true"]
    assert choose_fast_path(cfg(*tp_sp), H100).transformer_kwargs()["tp_comm_overlap"]
    with pytest.raises(ValueError, match="train.gpu.tp_comm_overlap"):
        choose_fast_path(cfg("train.gpu.tp_comm_overlap=true"), H100)     # TP1
    assert not choose_fast_path(cfg("train.gpu.grad_reduce_dtype=bf16"), H100).ddp_kwargs()["grad_reduce_in_fp32"]
    with pytest.raises(ValueError, match="train.gpu.grad_reduce_dtype"):
        choose_fast_path(cfg("train.gpu.grad_reduce_dtype=fp16"), CPU)


def test_param_gather_overlap_follows_the_distributed_optimizer_and_vpp():
    vpp = ["parallel=pp2", "parallel.virtual_pipeline_model_parallel_size=2",
           "parallel.use_distributed_optimizer=true", "model.num_layers=4"]
    path = choose_fast_path(cfg(*vpp), H100)
    assert path.overlap_param_gather and path.align_param_gather
    assert not choose_fast_path(cfg("parallel.use_distributed_optimizer=false"), H100).overlap_param_gather
    assert choose_fast_path(cfg(*vpp, "train.overlap_param_gather=true"), CPU).overlap_param_gather
    assert not choose_fast_path(cfg(*vpp, "train.overlap_param_gather=false"), H100).overlap_param_gather
