"""MSG masks on a megatron-core Tele-FLM model: the grown model starts as the old function.

Where the masks act (m ramps 0 -> 1; "new" = entries the growth added):

* hidden size: the embedding output and every sublayer output (attention
  ``linear_proj``, MLP ``linear_fc2``) are multiplied by a vector that is 1
  on old dims and m on new ones, so at m = 0 the residual stream is zero on
  the new dims.  RMSNorm takes its mean square over masked dims only,
  ``sum(x²·mask) / sum(mask)``: at m = 0 that is the old model's statistic,
  whatever the new width.
* heads: the new heads' outputs (the ``linear_proj`` input channels) × m.
* FFN: the new units of the SwiGLU product ``silu(gate)·up`` (the
  ``linear_fc2`` input) × m.
* depth: a new layer computes ``h + m·(Layer(h) − h)`` = ``h + m·Block(h)``.

Masks live in non-persistent buffers plus one float per module (the ramp
value), so the state dict is exactly the plain model's: a checkpoint written
after the ramp loads into :func:`pretrain.model.teleflm.build_model` unchanged, and
at m = 1 every masked module takes its plain code path.  The ramp value is a
function of the iteration (:func:`ramp_value`), which the checkpoint holds.

Both layer specs carry the masks (:func:`masked_layer_spec`): the norms and the layer are
masked classes in the spec; the row-parallel projections and the embedding get their masks as
forward hooks (:func:`attach_growth`), whichever class (local or TransformerEngine) built them.
"""

from __future__ import annotations

import copy
from functools import partial
from typing import Iterable

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import TransformerLayer

from pretrain.growth.spec import GrowthSpec


def ramp_value(iteration: int, start_iteration: int, ramp_iters: int) -> float:
    """m at a step that begins at ``iteration``: 0 for the first step after growth, 1 after the ramp."""
    if ramp_iters <= 0:
        return 1.0
    return float(min(1.0, max(0.0, (iteration - start_iteration) / ramp_iters)))


def _mask(new_dims: torch.Tensor, ramp: float, dtype: torch.dtype) -> torch.Tensor:
    return (1.0 - new_dims * (1.0 - ramp)).to(dtype)


class MaskedRMSNorm(torch.nn.RMSNorm):
    """RMSNorm whose statistic covers the masked dims only (plain RMSNorm at m = 1)."""

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, **_kwargs):
        super().__init__(hidden_size, eps=eps, dtype=config.params_dtype)
        if config.sequence_parallel:
            self.weight.sequence_parallel = True
        self.register_buffer("growth_new_dims", None, persistent=False)
        self.growth_ramp = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.growth_new_dims is None or self.growth_ramp >= 1.0:
            return super().forward(x)
        mask = _mask(self.growth_new_dims, self.growth_ramp, torch.float32)
        xf = x.float()
        mean_square = (xf * xf * mask).sum(-1, keepdim=True) / mask.sum()
        return (xf * torch.rsqrt(mean_square + self.eps)).to(x.dtype) * self.weight


class MaskedTransformerLayer(TransformerLayer):
    """A layer that, when new, computes ``h + m·(Layer(h) − h)`` (MSG depth growth)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.growth_is_new = False
        self.growth_ramp = 1.0

    def forward(self, *args, **kwargs):
        output, context = super().forward(*args, **kwargs)
        if self.growth_is_new and self.growth_ramp < 1.0:
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            output = hidden + self.growth_ramp * (output - hidden)
        return output, context


def masked_layer_spec(use_transformer_engine: bool = False) -> ModuleSpec:
    """The Tele-FLM layer spec (local or TransformerEngine) with MSG's masked pieces swapped in.

    Both specs get a :class:`MaskedRMSNorm` as ``input_layernorm``/``pre_mlp_layernorm`` and
    :class:`MaskedTransformerLayer` as the layer.  megatron's TE spec fuses those norms into
    ``TELayerNormColumnParallelLinear`` (``linear_qkv``, ``linear_fc1``), whose statistic cannot be
    masked, so the masked TE spec un-fuses them: a separate masked norm + ``TEColumnParallelLinear``.
    The checkpoint keys stay the TE spec's (``...linear_qkv.layer_norm_weight``) through the
    layer's ``sharded_state_dict_keys_map``, the same map megatron's local spec carries.  The masks
    on the ``linear_proj``/``linear_fc2`` inputs and outputs are forward hooks that
    :func:`attach_growth` adds to whichever row-parallel linear the spec built (local or TE), so
    those entries stay the base spec's.
    """
    from pretrain.model.teleflm import layer_spec

    spec = copy.deepcopy(layer_spec(use_transformer_engine))
    layer = spec.submodules
    spec.module = MaskedTransformerLayer
    layer.input_layernorm = MaskedRMSNorm
    layer.pre_mlp_layernorm = MaskedRMSNorm
    if use_transformer_engine:
        from megatron.core.extensions.transformer_engine import TEColumnParallelLinear

        layer.self_attention.submodules.linear_qkv = TEColumnParallelLinear
        layer.mlp.submodules.linear_fc1 = TEColumnParallelLinear
        layer.sharded_state_dict_keys_map = dict(layer_spec(False).submodules.sharded_state_dict_keys_map)
    return spec


def masked_block_spec(config: TransformerConfig, vp_stage: int | None,
                      use_transformer_engine: bool = False) -> TransformerBlockSubmodules:
    num_layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    return TransformerBlockSubmodules(layer_specs=[masked_layer_spec(use_transformer_engine)] * num_layers,
                                      layer_norm=MaskedRMSNorm)


# ----------------------------------------------------------------------------
# Attaching a growth to a built model
# ----------------------------------------------------------------------------

def _new_from(old: int, new: int) -> torch.Tensor | None:
    """1.0 on entries ``[old, new)``; None when nothing was added (no mask needed)."""
    if new == old:
        return None
    return (torch.arange(new) >= old).float()


def _tp_slice(full: torch.Tensor | None) -> torch.Tensor | None:
    """This TP rank's share of a row-parallel linear's input mask (its input is split across TP)."""
    if full is None:
        return None
    local_size = full.numel() // parallel_state.get_tensor_model_parallel_world_size()
    rank = parallel_state.get_tensor_model_parallel_rank()
    return full[rank * local_size:(rank + 1) * local_size].clone()


def _mask_input_hook(module, args):
    """Forward pre-hook: new heads' / FFN units' channels of a row-parallel linear's input × m."""
    if module.growth_new_inputs is None or module.growth_ramp >= 1.0:
        return None
    return (args[0] * _mask(module.growth_new_inputs, module.growth_ramp, args[0].dtype), *args[1:])


def _mask_output_hook(module, _inputs, output):
    """Forward hook: new hidden dims of the output × m (a tensor, or megatron's ``(out, bias)``)."""
    if module.growth_new_outputs is None or module.growth_ramp >= 1.0:
        return output
    if isinstance(output, tuple):
        return (output[0] * _mask(module.growth_new_outputs, module.growth_ramp, output[0].dtype), *output[1:])
    return output * _mask(module.growth_new_outputs, module.growth_ramp, output.dtype)


def _attach_masks(module: torch.nn.Module, new_inputs: torch.Tensor | None,
                  new_outputs: torch.Tensor | None) -> None:
    """Masks as non-persistent buffers + hooks: works on any module class (RowParallelLinear,
    TERowParallelLinear, the embedding) and leaves its state dict alone."""
    module.register_buffer("growth_new_inputs", new_inputs, persistent=False)
    module.register_buffer("growth_new_outputs", new_outputs, persistent=False)
    module.growth_ramp = 1.0
    if new_inputs is not None:
        module.register_forward_pre_hook(_mask_input_hook)
    if new_outputs is not None:
        module.register_forward_hook(_mask_output_hook)


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def attach_growth(model: GPTModel, spec: GrowthSpec) -> None:
    """Mark which entries of this (TP/PP-sharded) model chunk are new; masks start at m = 0."""
    device = _device_of(model)
    old, new = spec.old, spec.new
    hidden = _new_from(old.hidden_size, new.hidden_size)
    heads = _new_from(old.num_attention_heads * old.kv_channels, new.num_attention_heads * new.kv_channels)
    ffn = _new_from(old.ffn_hidden_size, new.ffn_hidden_size)
    to = (lambda t: None if t is None else t.to(device))
    row_inputs = {"self_attention.linear_proj": heads, "mlp.linear_fc2": ffn}
    for name, module in model.named_modules():
        if isinstance(module, MaskedRMSNorm):
            module.growth_new_dims = to(hidden)
        elif isinstance(module, MaskedTransformerLayer):
            module.growth_is_new = (module.layer_number - 1) in spec.new_layers
        else:
            suffix = next((s for s in row_inputs if name.endswith(s)), None)
            if suffix is not None:
                _attach_masks(module, to(_tp_slice(row_inputs[suffix])), to(hidden))
    if getattr(model, "pre_process", False):
        _attach_masks(model.embedding, None, to(hidden))
    set_ramp([model], 0.0)


def set_ramp(model_chunks: Iterable[torch.nn.Module], ramp: float) -> None:
    """Set m on every masked module (and the embedding) of these chunks (DDP-wrapped or not)."""
    for chunk in model_chunks:
        for module in chunk.modules():
            if hasattr(module, "growth_ramp"):
                module.growth_ramp = float(ramp)


# ----------------------------------------------------------------------------
# Config: the ``growth`` block of a grown stage
# ----------------------------------------------------------------------------

def growth_block(cfg: DictConfig) -> DictConfig | None:
    """``cfg.growth`` when this run continues a growth (spec + start_iteration + ramp_iters)."""
    block = OmegaConf.select(cfg, "growth")
    if block is None or OmegaConf.select(block, "spec") is None:
        return None
    for key in ("start_iteration", "ramp_iters"):
        if OmegaConf.select(block, key) is None:
            raise ValueError(f"growth.{key} is missing (a grown stage needs growth.spec, "
                             "growth.start_iteration and growth.ramp_iters)")
    return block


def ramp_for(cfg: DictConfig, iteration: int) -> float:
    block = growth_block(cfg)
    if block is None:
        return 1.0
    return ramp_value(iteration, int(block.start_iteration), int(block.ramp_iters))


def build_masked_model(cfg: DictConfig, pre_process: bool = True, post_process: bool = True,
                       vp_stage: int | None = None) -> GPTModel:
    """:func:`pretrain.model.teleflm.build_model` with the masked layer spec, growth attached from
    ``cfg.growth`` (a plain model when ``cfg.growth`` is absent or its ramp is over)."""
    from pretrain.model import teleflm
    from pretrain.model.fast_path import fast_path_for

    te = fast_path_for(cfg).spec == "transformer_engine"  # the one place choosing the spec by machine
    model = teleflm.build_model(cfg, pre_process, post_process, vp_stage,
                                block_spec=partial(masked_block_spec, use_transformer_engine=te))
    block = growth_block(cfg)
    if block is not None:
        attach_growth(model, GrowthSpec.from_dict(block.spec))
    return model
