"""μP (Maximal Update Parametrization) rules for Tele-FLM trained with Adam.

Why a separate module: the rules are needed in four places (the model's
initialiser, the optimizer's parameter groups, the coordinate check and the
hyperparameter transfer) and must give the same answer in all of them.

The rules (Tensor Programs V, arXiv 2203.03466, Table 8 "μP for Adam";
microsoft/mup ``MuAdam``/``MuReadout``; Tele-FLM arXiv 2404.16645 §μP):

====================  ==================================  =========================
kind                  init std at width ``n``              Adam LR at width ``n``
====================  ==================================  =========================
``matrix``            ``init_method_std / sqrt(m_in)``     ``lr_matrix / m_in``
``block_output``      as matrix (optionally ÷ sqrt(2L))    ``lr_matrix / m_in``
``embedding``         ``embedding_init_std`` (constant)    ``lr`` (constant)
``readout``           ``init_method_std`` (constant)       ``lr`` (constant)
``vector``            ones (norm gains)                    ``lr`` (constant)
====================  ==================================  =========================

``m_in`` is the fan-in multiplier of that weight: ``hidden / base_hidden`` for
QKV and fc1, ``heads / base_heads`` for the attention output projection (head
dim is fixed, so its fan-in is ``heads × kv_channels``) and ``ffn / base_ffn``
for fc2.  The readout's 1/width comes from the logit multiplier
``output_mult / width_mult`` in ``pretrain.model.teleflm``; that is why its init and LR
stay constant (a weight with one infinite dimension is "vector-like" in μP).

Every rule reads the *global* shapes from the model config and the parameter's
*name* with wrappers stripped, never a local tensor shape, so a TP2 shard,
a PP stage's re-numbered layer and the unsharded weight get the same rule.  A
grown model's config carries its new width and the unchanged base shapes, so
it gets the rules of its new width.

Config keys (each read here only):

* ``model.mup.enabled``, ``model.mup.base_hidden_size``,
  ``model.mup.base_ffn_hidden_size``, ``model.mup.base_num_attention_heads``:
  the proxy's shape that the hyperparameters were tuned at.
* ``model.mup.depth_scaled_block_output`` (default false): divide the block
  output projections' init std by sqrt(2·num_layers) (GPT-2 / mup examples).
* ``model.init_method_std`` (matrix-like std at base width),
  ``model.embedding_init_std`` (vector-like std).
* ``train.lr`` (vector-like LR; also the schedule's reference LR),
  ``train.lr_matrix`` (matrix-like LR at base width; null = ``train.lr``),
  ``train.min_lr`` (vector-like floor; the matrix group keeps the same
  min/max ratio).
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal

import torch
from omegaconf import DictConfig

from pretrain.config.schema import typed_model, typed_train

ParamKind = Literal["matrix", "block_output", "embedding", "readout", "vector"]
LrClass = Literal["vector_like", "matrix_like"]

MATRIX_LIKE_KINDS: frozenset[str] = frozenset({"matrix", "block_output"})


# ----------------------------------------------------------------------------
# Shapes and multipliers
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class BaseShapes:
    """The proxy's width dimensions: the shape the hyperparameters are tuned at."""

    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int


def mup_enabled(model_cfg: DictConfig) -> bool:
    return typed_model(model_cfg).mup.enabled


def base_shapes(model_cfg: DictConfig) -> BaseShapes:
    """Base shapes from ``model.mup.base_*``; missing keys fall back to this model's own
    dimension (a model that *is* its base), which is what microsoft/mup does too."""
    m = typed_model(model_cfg)

    def positive(key: str, own: int) -> int:
        value = m.mup[key]
        value = own if value is None else value
        if value <= 0:
            raise ValueError(f"model.mup.{key} must be positive, got {value}")
        return value

    return BaseShapes(
        hidden_size=positive("base_hidden_size", m.hidden_size),
        ffn_hidden_size=positive("base_ffn_hidden_size", m.ffn_hidden_size),
        num_attention_heads=positive("base_num_attention_heads", m.num_attention_heads),
    )


def canonical_name(name: str) -> str:
    """Strip wrapper prefixes (DDP's and Float16Module's ``module.``) so rules see megatron's names."""
    while name.startswith("module."):
        name = name[len("module."):]
    return name


def param_kind(name: str) -> ParamKind:
    """Classify a parameter by its megatron name (layer index and TP rank play no part)."""
    name = canonical_name(name)
    if "word_embeddings" in name:
        return "embedding"
    if name.startswith("output_layer"):
        return "readout"
    if "norm" in name or name.endswith("bias"):
        return "vector"
    if "linear_proj" in name or "linear_fc2" in name:
        return "block_output"
    return "matrix"


def lr_class(kind: ParamKind) -> LrClass:
    return "matrix_like" if kind in MATRIX_LIKE_KINDS else "vector_like"


def fan_in_mult(model_cfg: DictConfig, name: str) -> float:
    """Fan-in width multiplier of a hidden matrix (1.0 for vector-like weights or μP off)."""
    model_cfg = typed_model(model_cfg)
    if not mup_enabled(model_cfg) or param_kind(name) not in MATRIX_LIKE_KINDS:
        return 1.0
    base = base_shapes(model_cfg)
    name = canonical_name(name)
    if "linear_fc2" in name:
        return model_cfg.ffn_hidden_size / base.ffn_hidden_size
    if "linear_proj" in name:  # fan-in heads × kv_channels, head dim fixed
        return model_cfg.num_attention_heads / base.num_attention_heads
    return model_cfg.hidden_size / base.hidden_size


# ----------------------------------------------------------------------------
# Initialisation
# ----------------------------------------------------------------------------

def init_std(model_cfg: DictConfig, kind: ParamKind, name: str | None = None) -> float | None:
    """Init std of one parameter at this model's width; None means ones (norm gains).

    ``name`` is needed for matrix-like weights under μP (their fan-in differs:
    fc2 reads the FFN width); without it the hidden-size multiplier is used.
    """
    model_cfg = typed_model(model_cfg)
    matrix_std = model_cfg.init_method_std
    vector_std = matrix_std if model_cfg.embedding_init_std is None else model_cfg.embedding_init_std
    if kind == "vector":
        return None
    if kind == "embedding":
        return vector_std
    if kind == "readout":
        return matrix_std
    if kind not in MATRIX_LIKE_KINDS:
        raise ValueError(f"unknown parameter kind {kind!r}")
    if name is None:
        mult = width_mult_hidden(model_cfg)
    else:
        mult = fan_in_mult(model_cfg, name)
    std = matrix_std / math.sqrt(mult)
    if kind == "block_output" and model_cfg.mup.get("depth_scaled_block_output", False):  # not a schema field
        std /= math.sqrt(2.0 * model_cfg.num_layers)
    return std


def initializer(model_cfg: DictConfig, kind: ParamKind, name: str | None = None
                ) -> Callable[[torch.Tensor, torch.Generator], None]:
    """The init function for one parameter (normal, or ±2σ truncated normal when
    ``model.truncated_normal_init``); it is applied to the full, unsharded tensor."""
    model_cfg = typed_model(model_cfg)
    std = init_std(model_cfg, kind, name)
    if std is None:
        return lambda tensor, generator: torch.nn.init.ones_(tensor)
    truncated = model_cfg.truncated_normal_init

    def init(tensor: torch.Tensor, generator: torch.Generator) -> None:
        if truncated:
            torch.nn.init.trunc_normal_(tensor, 0.0, std, -2.0 * std, 2.0 * std, generator=generator)
        else:
            torch.nn.init.normal_(tensor, 0.0, std, generator=generator)
    return init


def width_mult_hidden(model_cfg: DictConfig) -> float:
    if not mup_enabled(model_cfg):
        return 1.0
    return model_cfg.hidden_size / base_shapes(model_cfg).hidden_size


# ----------------------------------------------------------------------------
# Learning rates
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class GroupLr:
    """Peak and floor LR of one optimizer parameter group."""

    max_lr: float
    min_lr: float


def base_lrs(train_cfg: DictConfig) -> tuple[float, float, float]:
    """(vector-like LR, matrix-like LR at base width, min/max ratio) from ``train.*``."""
    train_cfg = typed_train(train_cfg)
    lr = train_cfg.lr
    if lr <= 0:
        raise ValueError(f"train.lr must be positive, got {lr}")
    lr_matrix = lr if train_cfg.lr_matrix is None else train_cfg.lr_matrix
    if lr_matrix <= 0:
        raise ValueError(f"train.lr_matrix must be positive, got {lr_matrix}")
    min_lr = train_cfg.min_lr
    if not 0.0 <= min_lr <= lr:
        raise ValueError(f"train.min_lr must be in [0, train.lr={lr}], got {min_lr}")
    return lr, lr_matrix, min_lr / lr


def group_lr(cfg: DictConfig, name: str) -> GroupLr:
    """The μP LR of the parameter called ``name`` under the full run config ``cfg``."""
    lr, lr_matrix, floor_ratio = base_lrs(cfg.train)
    kind = param_kind(name)
    if lr_class(kind) == "vector_like":
        peak = lr
    else:
        peak = lr_matrix / fan_in_mult(cfg.model, name)
    return GroupLr(max_lr=peak, min_lr=peak * floor_ratio)


def lr_groups(cfg: DictConfig, named_params: Iterable[tuple[str, torch.nn.Parameter]]
              ) -> dict[GroupLr, list[tuple[str, torch.nn.Parameter]]]:
    """Parameters bucketed by their (max, min) LR, in a deterministic order."""
    groups: dict[GroupLr, list[tuple[str, torch.nn.Parameter]]] = {}
    for name, param in named_params:
        if not param.requires_grad:
            continue
        groups.setdefault(group_lr(cfg, name), []).append((name, param))
    return dict(sorted(groups.items(), key=lambda item: (-item[0].max_lr, -item[0].min_lr)))


def torch_param_groups(cfg: DictConfig, model: torch.nn.Module) -> list[dict[str, Any]]:
    """Param groups for a plain torch optimizer (coordinate check, benchmark loop).

    Each group carries ``max_lr``/``min_lr`` like megatron's, so one schedule
    function can set ``lr`` for all of them.
    """
    return [{"params": [p for _, p in members], "lr": lrs.max_lr, "max_lr": lrs.max_lr,
             "min_lr": lrs.min_lr, "names": [n for n, _ in members]}
            for lrs, members in lr_groups(cfg, model.named_parameters()).items()]


# ----------------------------------------------------------------------------
# megatron-core's get_megatron_optimizer
# ----------------------------------------------------------------------------

_GROUP_ATTR = "mup_lr_group_{index}"


def megatron_optimizer_kwargs(cfg: DictConfig, optimizer_config: Any,
                              model_chunks: list[torch.nn.Module]) -> dict[str, Any]:
    """Extra keyword arguments for ``get_megatron_optimizer`` that give each μP group its LR.

    megatron-core ≥ 0.14 (0.16.1 here, and newer) takes ``config_overrides``:
    {ParamKey: {"max_lr", "min_lr"}}, read per group by the LR scheduler.
    Older releases take ``scale_lr_cond(name, param)`` and one ``lr_mult``
    (the scheduler multiplies the group's LR by it).  Which one exists is read
    from the signature, so the same call works on both.

    Parameters are tagged with a boolean attribute per group and matched by
    ``ParamKey(attr=...)``: attributes survive DDP wrapping and need no name
    patterns, and every rank derives identical groups from the config.
    """
    from megatron.core.optimizer import get_megatron_optimizer

    named = [(name, param) for chunk in model_chunks for name, param in chunk.named_parameters()]
    groups = lr_groups(cfg, named)
    signature = inspect.signature(get_megatron_optimizer).parameters
    if "config_overrides" in signature:
        return {"config_overrides": _config_overrides(optimizer_config, groups)}
    if "scale_lr_cond" in signature:
        return _scale_lr_cond_kwargs(cfg, groups)
    raise RuntimeError("this megatron-core's get_megatron_optimizer takes neither config_overrides "
                       "nor scale_lr_cond: μP per-group learning rates cannot be passed")


def _config_overrides(optimizer_config: Any, groups: dict[GroupLr, list]) -> dict:
    from megatron.core import optimizer as mcore_optimizer
    from megatron.core.optimizer.optimizer_config import ParamKey

    # Passing overrides replaces megatron's default (no weight decay on biases and
    # 1-D params); keep that default so μP changes only the learning rates.
    standard = getattr(mcore_optimizer, "get_standard_config_overrides", None)
    overrides = dict(standard(optimizer_config)) if standard is not None else {}
    for index, (lrs, members) in enumerate(groups.items()):
        attr = _GROUP_ATTR.format(index=index)
        for _, param in members:
            setattr(param, attr, True)
        overrides[ParamKey(attr=attr)] = {"max_lr": lrs.max_lr, "min_lr": lrs.min_lr}
    return overrides


def _scale_lr_cond_kwargs(cfg: DictConfig, groups: dict[GroupLr, list]) -> dict[str, Any]:
    lr = typed_train(cfg.train).lr
    scaled = [lrs for lrs in groups if not math.isclose(lrs.max_lr, lr, rel_tol=1e-12)]
    if len(scaled) > 1:
        raise ValueError(
            "this megatron-core takes a single lr_mult, but μP needs "
            f"{len(scaled)} matrix LRs {[g.max_lr for g in scaled]}: make "
            "model.ffn_hidden_size/model.mup.base_ffn_hidden_size and "
            "model.num_attention_heads/model.mup.base_num_attention_heads equal "
            "model.hidden_size/model.mup.base_hidden_size")
    if not scaled:
        return {}
    mult = scaled[0].max_lr / lr
    scaled_ids = {id(param) for _, param in groups[scaled[0]]}
    return {"scale_lr_cond": lambda _name, param: id(param) in scaled_ids, "lr_mult": mult}


# ----------------------------------------------------------------------------
# Transfer (proxy -> target)
# ----------------------------------------------------------------------------

# Representative names, one per rule, for reporting effective values.
REPRESENTATIVE_NAMES: dict[str, str] = {
    "embedding": "embedding.word_embeddings.weight",
    "qkv": "decoder.layers.0.self_attention.linear_qkv.weight",
    "attn_out": "decoder.layers.0.self_attention.linear_proj.weight",
    "fc1": "decoder.layers.0.mlp.linear_fc1.weight",
    "fc2": "decoder.layers.0.mlp.linear_fc2.weight",
    "norm": "decoder.layers.0.input_layernorm.weight",
    "readout": "output_layer.weight",
}


def effective_hyperparameters(cfg: DictConfig) -> dict[str, dict[str, float | None]]:
    """What each representative weight actually gets at this config's width:
    init std, peak LR and floor LR (for reports and the transferred config)."""
    table: dict[str, dict[str, float | None]] = {}
    for label, name in REPRESENTATIVE_NAMES.items():
        lrs = group_lr(cfg, name)
        table[label] = {"init_std": init_std(cfg.model, param_kind(name), name),
                        "max_lr": lrs.max_lr, "min_lr": lrs.min_lr,
                        "fan_in_mult": fan_in_mult(cfg.model, name)}
    table["logits"] = {"multiplier": typed_model(cfg.model).output_mult / width_mult_hidden(cfg.model)}
    return table


_LAYER_RE = re.compile(r"decoder\.layers\.\d+\.")


def rule_signature(model_cfg: DictConfig, name: str) -> tuple[str, float]:
    """(kind, fan-in multiplier): equal for names differing only by layer index or rank."""
    return param_kind(_LAYER_RE.sub("decoder.layers.N.", name)), fan_in_mult(model_cfg, name)
