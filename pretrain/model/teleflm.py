"""The Tele-FLM architecture as a megatron-core ``GPTModel``.

Tele-FLM is a plain pre-norm GPT: RMSNorm, SwiGLU, RoPE, untied input/output
embeddings, no biases, a final norm, plus two scalar multipliers from its μP
search (embedding output × ``input_mult``; logits × ``output_mult /
width_mult``).  Everything except the multipliers and the initialisation is a
stock megatron-core layer spec, so checkpoints and parameter names are
megatron-core's standard ones (the HF exporter maps those names).

Initialisation is done by :func:`initialize_parameters` after the model is
built (and skipped when a checkpoint is about to replace it), block by block from
generators seeded by each parameter's *global* name and the block's position in
the full tensor.  Every rank draws only its shard, yet the same seed gives the
same network at TP1, TP2, PP2, ... so losses can be compared across layouts.  μP work plugs in through :func:`init_method_for`.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from megatron.core import parallel_state, tensor_parallel

from pretrain.model.mup import initializer, param_kind  # noqa: F401  (param_kind re-exported: one classifier)
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_block import (
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.transformer.transformer_config import TransformerConfig

from pretrain.config.resolve import padded_vocab_size, resolved_vocab_size  # noqa: F401 (re-exported)
from pretrain.config.schema import typed, typed_model
from pretrain.model.rope import configure_yarn, gpt_model_kwargs

from pretrain.model.fast_path import FastPath, fast_path_for
from pretrain.model.sharded_init import init_shard, shard_ranges

ParamKind = Literal["matrix", "block_output", "embedding", "readout", "vector"]


# ----------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------

def width_mult(model_cfg: DictConfig) -> float:
    """μP width multiplier (hidden / base hidden); 1.0 when μP is off."""
    m = typed_model(model_cfg)
    if not m.mup.enabled:
        return 1.0
    return m.hidden_size / (m.mup.base_hidden_size or m.hidden_size)


def logit_multiplier(model_cfg: DictConfig) -> float:
    m = typed_model(model_cfg)
    return m.output_mult / width_mult(m)


def _leave_uninitialised(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def transformer_config_from(cfg: DictConfig, fast_path: FastPath | None = None) -> TransformerConfig:
    """Map ``cfg.model`` + ``cfg.parallel`` (+ ``cfg.train`` precision/recompute) to megatron.

    The machine-dependent flags (fusions, FP8, TP comm overlap) come from ``fast_path``
    (default: :func:`pretrain.model.fast_path.fast_path_for` this process's machine)."""
    cfg = typed(cfg, strict=False)
    fast_path = fast_path or fast_path_for(cfg)
    m, p = cfg.model, cfg.parallel
    bf16 = cfg.train.bf16
    recompute = cfg.train.recompute
    recompute_kwargs: dict = {}
    if recompute == "selective":
        recompute_kwargs = dict(recompute_granularity="selective")
    elif recompute == "full":
        recompute_kwargs = dict(recompute_granularity="full", recompute_method="uniform",
                                recompute_num_layers=1)
    elif recompute != "none":
        raise ValueError(f"train.recompute must be none|selective|full, got {recompute!r}")
    tp = p.tensor_model_parallel_size
    vpp = p.virtual_pipeline_model_parallel_size
    init_std = m.init_method_std
    return TransformerConfig(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.num_query_groups or m.num_attention_heads,
        kv_channels=m.kv_channels or m.hidden_size // m.num_attention_heads,
        ffn_hidden_size=m.ffn_hidden_size,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=p.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=vpp or None,
        sequence_parallel=p.sequence_parallel and tp > 1,
        # Interleaved 1F1B sends activations and gradients to the same peer in one
        # exchange; batched p2p can pair them wrongly (seen on gloo with PP2), so use
        # megatron's separate, overlapped p2p ops there (Megatron-LM's default too).
        overlap_p2p_comm=bool(vpp),
        batch_p2p_comm=not bool(vpp),
        normalization="RMSNorm",
        layernorm_epsilon=m.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        **fast_path.transformer_kwargs(),
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        pipeline_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_cpu_initialization=not torch.cuda.is_available(),
        # megatron's init pass must run (it tags params with their TP partition
        # attributes) but its values are discarded: initialize_parameters() does it.
        perform_initialization=True,
        init_method=_leave_uninitialised,
        output_layer_init_method=_leave_uninitialised,
        embedding_init_method=_leave_uninitialised,
        init_method_std=init_std,
        embedding_init_method_std=m.embedding_init_std if m.embedding_init_std is not None else init_std,
        **recompute_kwargs,
    )


# ----------------------------------------------------------------------------
# Layer spec: local modules + SDPA attention + a sequence-parallel-aware RMSNorm
# ----------------------------------------------------------------------------

class TeleFLMRMSNorm:
    """torch RMSNorm whose weight is tagged for sequence parallelism.

    megatron's ``WrappedTorchNorm`` refuses ``sequence_parallel`` because it
    cannot tag the weight; under SP each TP rank sees a different slice of the
    sequence, so the norm-weight gradients must be all-reduced across TP, which
    ``finalize_model_grads`` does for params carrying ``sequence_parallel=True``.
    """

    def __new__(cls, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, **_kwargs):
        norm = torch.nn.RMSNorm(hidden_size, eps=eps, dtype=config.params_dtype)
        if config.sequence_parallel:
            norm.weight.sequence_parallel = True
        return norm


class SdpaAttention(MegatronModule):
    """Core attention through ``torch.nn.functional.scaled_dot_product_attention``.

    megatron's local ``DotProductAttention`` materialises the [b, h, s, s]
    score matrix with baddbmm + softmax; SDPA picks a fused (flash / memory
    efficient) kernel where one exists.  Inputs are megatron's [s, b, h, d];
    the output is [s, b, h*d] like ``DotProductAttention``.  Causal; with
    ``model.document_mask`` the data also carries megatron's per-document mask
    ([b, 1, s, s] bool, True = masked out: GPTDataset's ``reset_attention_mask``),
    so no token attends across an EOD into another document of the packed sequence.
    """

    def __init__(self, config: TransformerConfig, layer_number: int, attn_mask_type: AttnMaskType,
                 attention_type: str, attention_dropout: float | None = None,
                 softmax_scale: float | None = None, **_kwargs):
        super().__init__(config=config)
        if attn_mask_type != AttnMaskType.causal:
            raise ValueError(f"SdpaAttention supports causal masks only, got {attn_mask_type}")
        if config.context_parallel_size > 1:  # it would attend within this rank's sequence chunk only
            raise ValueError("SdpaAttention has no context-parallel (ring) attention: megatron-core's is "
                             "TEDotProductAttention only (TransformerEngine, CUDA); docs/pretrain.md")
        self.softmax_scale = softmax_scale  # None -> 1/sqrt(head_dim), as megatron
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        tp = config.tensor_model_parallel_size
        self.heads_per_rank = config.num_attention_heads // tp
        self.groups_per_rank = max(1, config.num_query_groups // tp)

    def forward(self, query, key, value, attention_mask, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None):
        if packed_seq_params is not None or attention_bias is not None:
            raise NotImplementedError("SdpaAttention: THD packed_seq_params / attention bias unsupported "
                                      "(packed documents: model.document_mask, a dense mask)")
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, h, s, d]
        if self.heads_per_rank != k.size(1):
            repeat = self.heads_per_rank // k.size(1)
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        mask = None
        if attention_mask is not None:  # megatron: True = masked out; SDPA: True = attend
            s_q, s_k = q.size(2), k.size(2)
            causal = torch.ones(s_q, s_k, dtype=torch.bool, device=q.device).tril()
            mask = causal & ~attention_mask.to(torch.bool)
        kwargs = dict(attn_mask=mask, is_causal=mask is None, scale=self.softmax_scale)
        dropout_p = self.dropout_p if self.training else 0.0
        if dropout_p > 0.0 and not self.config.sequence_parallel:
            with tensor_parallel.get_cuda_rng_tracker().fork():
                out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, **kwargs)
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, **kwargs)
        s, b = out.size(2), out.size(0)
        return out.permute(2, 0, 1, 3).reshape(s, b, -1)


def layer_spec(use_transformer_engine: bool = False):
    """One Tele-FLM transformer layer: megatron's TE spec, or local modules + SDPA + SP-aware RMSNorm."""
    if use_transformer_engine:
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return get_gpt_layer_with_transformer_engine_spec()
    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    spec.submodules.input_layernorm = TeleFLMRMSNorm
    spec.submodules.pre_mlp_layernorm = TeleFLMRMSNorm
    spec.submodules.self_attention.submodules.core_attention = SdpaAttention
    return spec


def decoder_block_spec(config: TransformerConfig, vp_stage: int | None,
                       use_transformer_engine: bool = False) -> TransformerBlockSubmodules:
    num_layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    if use_transformer_engine:
        from megatron.core.extensions.transformer_engine import TENorm

        final_norm = TENorm
    else:
        final_norm = TeleFLMRMSNorm
    return TransformerBlockSubmodules(layer_specs=[layer_spec(use_transformer_engine)] * num_layers,
                                      layer_norm=final_norm)


# ----------------------------------------------------------------------------
# Initialisation (μP hooks)
# ----------------------------------------------------------------------------

def init_method_for(model_cfg: DictConfig, kind: ParamKind, name: str | None = None
                    ) -> Callable[[torch.Tensor, torch.Generator], None]:
    """The initialiser for one kind of parameter (applied to the full, unsharded tensor).

    The μP rules live in :mod:`pretrain.model.mup` (``initializer``): matrix-like std
    ``init_method_std / sqrt(fan-in multiplier)``, ``embedding_init_std`` for
    the embedding, ``init_method_std`` for the readout, ones for norm gains;
    truncated normal (±2σ) when ``truncated_normal_init``. With μP off the
    multipliers are 1.
    """
    return initializer(model_cfg, kind, name)


def global_parameter_names(model: GPTModel) -> dict[str, str]:
    """Local parameter name -> name at PP1 (global layer index), for seeding and docs."""
    layer_numbers = {}
    if getattr(model, "decoder", None) is not None:
        for local_index, layer in enumerate(model.decoder.layers):
            layer_numbers[str(local_index)] = str(layer.layer_number - 1)
    names = {}
    for name, _ in model.named_parameters():
        names[name] = re.sub(r"^decoder\.layers\.(\d+)\.",
                             lambda m: f"decoder.layers.{layer_numbers[m.group(1)]}.", name)
    return names


def tp_layout(param: torch.nn.Parameter) -> tuple[int, int, int, int]:
    """(partition dim, stride, TP size, TP rank) of one parameter; non-TP ones are whole (TP1, dim 0).

    megatron tags TP layers' weights even at TP1, so the blocking dimension of a tensor
    (and with it every value :mod:`pretrain.model.sharded_init` draws) is the same in
    every layout."""
    if not getattr(param, "tensor_model_parallel", False):
        return 0, 1, 1, 0
    return (param.partition_dim, getattr(param, "partition_stride", 1),
            parallel_state.get_tensor_model_parallel_world_size(), parallel_state.get_tensor_model_parallel_rank())


@torch.no_grad()
def initialize_parameters(model: GPTModel, model_cfg: DictConfig, seed: int) -> None:
    """Layout-independent init of this rank's shards only (:mod:`pretrain.model.sharded_init`).

    Each tensor's values are a function of (seed, its global name, position in the full
    tensor): TP1, TP2, PP2, ... build the same network, and a rank draws only its share.
    """
    global_names = global_parameter_names(model)
    for name, param in model.named_parameters():
        global_name = global_names[name]
        init = init_method_for(model_cfg, param_kind(global_name), global_name)
        dim, stride, tp_size, tp_rank = tp_layout(param)
        full_shape = list(param.shape)
        full_shape[dim] *= tp_size
        shard = torch.empty(param.shape, dtype=torch.float32)
        init_shard(shard, full_shape, dim, shard_ranges(full_shape[dim], tp_size, tp_rank, stride),
                   init, seed, global_name)
        param.copy_(shard.to(device=param.device, dtype=param.dtype))


# ----------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------

def _scale_output(multiplier: float):
    def hook(_module, _inputs, output):
        if isinstance(output, tuple):  # ColumnParallelLinear returns (out, bias)
            return (output[0] * multiplier, *output[1:])
        return output * multiplier
    return hook


def _shrink_embedding_grad(alpha: float):
    """GLM-130B embedding gradient shrink: e = α·e + (1−α)·e.detach() (same value, α× the gradient)."""
    def hook(_module, _inputs, output):
        return output * alpha + output.detach() * (1.0 - alpha)
    return hook


def _mask_padded_vocab(first_padded_column: int):
    """Give the vocabulary-padding columns of this TP shard's logits zero probability.

    Padding ids are never targets, yet with plain logits they carry softmax
    mass (their output rows start random and only slowly learn to be small),
    so the loss would depend on the padding and differ from the exported
    Hugging Face model, whose vocabulary is trimmed to the real tokens. With the
    mask, training, held-out BPB and the export compute one distribution.
    """
    def hook(_module, _inputs, output):
        logits = output[0] if isinstance(output, tuple) else output
        logits = logits.clone()
        logits[..., first_padded_column:] = float("-inf")
        return (logits, *output[1:]) if isinstance(output, tuple) else logits
    return hook


def build_model(cfg: DictConfig, pre_process: bool = True, post_process: bool = True,
                vp_stage: int | None = None,
                block_spec: Callable[[TransformerConfig, int | None], TransformerBlockSubmodules] | None = None,
                initialize: bool = True) -> GPTModel:
    """Build this rank's (pipeline stage's, virtual stage's) slice of Tele-FLM.

    Needs ``parallel_state`` initialised (TP/PP sizes come from it).  The
    vocabulary is padded to ``make_vocab_size_divisible_by × TP``.
    """
    cfg = typed(cfg, strict=False)
    fast_path = fast_path_for(cfg)
    config = transformer_config_from(cfg, fast_path)
    m = cfg.model
    configure_yarn(config, m)
    if block_spec is None:
        block_spec = partial(decoder_block_spec, use_transformer_engine=fast_path.spec == "transformer_engine")
    tp = cfg.parallel.tensor_model_parallel_size
    vocab = resolved_vocab_size(m, tp)
    model = GPTModel(
        config=config,
        # block_spec: model growth swaps in its masked layers; everything else stays the same
        transformer_layer_spec=block_spec(config, vp_stage),
        vocab_size=vocab,
        max_sequence_length=m.seq_length,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=False,
        rotary_base=m.rotary_base,
        vp_stage=vp_stage,
        **gpt_model_kwargs(m),  # position_embedding_type: rope, or yarn (model.rope_scaling)
    )
    if initialize:  # False when a checkpoint of this shape is loaded next: drawing values is wasted start-up
        initialize_parameters(model, m, seed=cfg.train.seed)
    input_mult = m.input_mult
    if pre_process and input_mult != 1.0:
        model.embedding.register_forward_hook(_scale_output(input_mult))
    shrink = m.embedding_grad_shrink  # 1.0: off (docs/spikes.md)
    if pre_process and shrink != 1.0:
        model.embedding.register_forward_hook(_shrink_embedding_grad(shrink))
    output_mult = logit_multiplier(m)
    if post_process and output_mult != 1.0:
        model.output_layer.register_forward_hook(_scale_output(output_mult))
    real_vocab = m.vocab_size
    if post_process and real_vocab < vocab:
        shard = vocab // tp
        start = parallel_state.get_tensor_model_parallel_rank() * shard
        first_padded = max(0, real_vocab - start)
        if first_padded < shard:
            model.output_layer.register_forward_hook(_mask_padded_vocab(first_padded))
    return model
