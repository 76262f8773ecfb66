"""Adam with fp32 master weights (megatron's optimizer) and the LR schedule.

The schedule counts optimizer steps (one per global batch), so ``train.*_iters``
keys read directly as steps.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

_MEGATRON_DECAY_STYLE = {"cosine": "cosine", "wsd": "WSD", "constant": "constant"}


def optimizer_config_from(cfg: DictConfig) -> OptimizerConfig:
    t = cfg.train
    return OptimizerConfig(
        optimizer="adam",
        lr=float(t.lr),
        min_lr=float(t.min_lr),
        weight_decay=float(t.weight_decay),
        adam_beta1=float(t.adam_beta1),
        adam_beta2=float(t.adam_beta2),
        adam_eps=float(t.adam_eps),
        clip_grad=float(t.clip_grad),
        bf16=bool(t.bf16),
        params_dtype=torch.bfloat16 if t.bf16 else torch.float32,
        use_distributed_optimizer=bool(cfg.parallel.use_distributed_optimizer),
        overlap_param_gather=bool(t.overlap_param_gather) and bool(cfg.parallel.use_distributed_optimizer),
    )


def build_optimizer(cfg: DictConfig, model_chunks: list):
    """megatron's (distributed) Adam over DDP-wrapped chunks.

    With ``model.mup.enabled`` each μP parameter group gets its own peak/floor
    LR (``pretrain.mup.megatron_optimizer_kwargs``: matrix-like weights
    ``train.lr_matrix / fan-in multiplier``, vector-like ``train.lr``); the
    scheduler then scales every group by the same warm-up/decay shape.
    """
    config = optimizer_config_from(cfg)
    kwargs = {}
    # train.lr_matrix is one of the seven hyperparameters with or without μP: never ignore it.
    if (OmegaConf.select(cfg, "model.mup.enabled", default=False)
            or OmegaConf.select(cfg, "train.lr_matrix") is not None):
        from pretrain.mup import megatron_optimizer_kwargs

        kwargs = megatron_optimizer_kwargs(cfg, config, model_chunks)
    return get_megatron_optimizer(config, model_chunks, **kwargs)


def build_scheduler(cfg: DictConfig, optimizer) -> OptimizerParamScheduler:
    t = cfg.train
    decay_iters = int(t.lr_decay_iters or t.train_iters)
    wsd_kwargs = {}
    if t.lr_decay_style == "wsd":
        wsd_kwargs = dict(wsd_decay_steps=max(1, int(round(float(t.wsd_decay_fraction) * decay_iters))),
                          lr_wsd_decay_style="cosine")
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=float(t.lr),
        min_lr=float(t.min_lr),
        lr_warmup_steps=int(t.lr_warmup_iters),
        lr_decay_steps=decay_iters,
        lr_decay_style=_MEGATRON_DECAY_STYLE[t.lr_decay_style],
        start_wd=float(t.weight_decay),
        end_wd=float(t.weight_decay),
        wd_incr_steps=decay_iters,
        wd_incr_style="constant",
        # The config is the truth on resume: the restored step is placed on the schedule
        # the config describes (raising train_iters stretches the decay).
        use_checkpoint_opt_param_scheduler=False,
        override_opt_param_scheduler=True,
        **wsd_kwargs,
    )
