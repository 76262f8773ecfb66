"""Adam with fp32 master weights (megatron's optimizer) and the LR schedule.

The schedule counts optimizer steps (one per global batch), so ``train.*_iters``
keys read directly as steps.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from pretrain.config.schema import typed
from pretrain.model.fast_path import fast_path_for

_MEGATRON_DECAY_STYLE = {"cosine": "cosine", "wsd": "WSD", "constant": "constant"}


def optimizer_config_from(cfg: DictConfig) -> OptimizerConfig:
    cfg = typed(cfg, strict=False)
    t = cfg.train
    return OptimizerConfig(
        optimizer="adam",
        lr=t.lr,
        min_lr=t.min_lr,
        weight_decay=t.weight_decay,
        adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2,
        adam_eps=t.adam_eps,
        clip_grad=t.clip_grad,
        bf16=t.bf16,
        params_dtype=torch.bfloat16 if t.bf16 else torch.float32,
        use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
        overlap_param_gather=fast_path_for(cfg).overlap_param_gather,
    )


def build_optimizer(cfg: DictConfig, model_chunks: list):
    """megatron's (distributed) Adam over DDP-wrapped chunks.

    With ``model.mup.enabled`` each μP parameter group gets its own peak/floor
    LR (``pretrain.model.mup.megatron_optimizer_kwargs``: matrix-like weights
    ``train.lr_matrix / fan-in multiplier``, vector-like ``train.lr``); the
    scheduler then scales every group by the same warm-up/decay shape.
    """
    cfg = typed(cfg, strict=False)
    config = optimizer_config_from(cfg)
    kwargs = {}
    # train.lr_matrix is one of the seven hyperparameters with or without μP: never ignore it.
    if cfg.model.mup.enabled or cfg.train.lr_matrix is not None:
        from pretrain.model.mup import megatron_optimizer_kwargs

        kwargs = megatron_optimizer_kwargs(cfg, config, model_chunks)
    return get_megatron_optimizer(config, model_chunks, **kwargs)


class StagedScheduler(OptimizerParamScheduler):
    """megatron's scheduler whose LR, in a stage with an LR segment (``train.stages[i].lr``),
    is that segment's (pretrain/train/stages.py); elsewhere megatron's own schedule.

    ``num_steps`` optimizer steps done means the next step is ``num_steps + 1``. Each μP
    group keeps its ratio to train.lr (``max_lr / train.lr``), as under megatron's schedule."""

    def __init__(self, optimizer, stages: list, **kwargs) -> None:
        self.stages = stages
        super().__init__(optimizer, **kwargs)

    def get_lr(self, param_group: dict) -> float:
        from pretrain.train.stages import stage_lr

        lr = stage_lr(self.stages, self.num_steps + 1)
        if lr is None:
            return super().get_lr(param_group)
        return lr * param_group.get("max_lr", self.max_lr) / self.max_lr


def build_scheduler(cfg: DictConfig, optimizer) -> OptimizerParamScheduler:
    from pretrain.train.stages import stages_from

    cfg = typed(cfg, strict=False)
    t = cfg.train
    stages = stages_from(cfg)
    staged = any(stage.lr is not None for stage in stages)
    decay_iters = t.lr_decay_iters or t.train_iters
    wsd_kwargs = {}
    if t.lr_decay_style == "wsd":
        wsd_kwargs = dict(wsd_decay_steps=max(1, int(round(t.wsd_decay_fraction * decay_iters))),
                          lr_wsd_decay_style="cosine")
    cls, extra = (StagedScheduler, {"stages": stages}) if staged else (OptimizerParamScheduler, {})
    return cls(
        optimizer,
        **extra,
        init_lr=0.0,
        max_lr=t.lr,
        min_lr=t.min_lr,
        lr_warmup_steps=t.lr_warmup_iters,
        lr_decay_steps=decay_iters,
        lr_decay_style=_MEGATRON_DECAY_STYLE[t.lr_decay_style],
        start_wd=t.weight_decay,
        end_wd=t.weight_decay,
        wd_incr_steps=decay_iters,
        wd_incr_style="constant",
        # The config is the truth on resume: the restored step is placed on the schedule
        # the config describes (raising train_iters stretches the decay).
        use_checkpoint_opt_param_scheduler=False,
        override_opt_param_scheduler=True,
        **wsd_kwargs,
    )


def group_lrs(optimizer) -> list[dict[str, float]]:
    """Each param group's peak and floor LR (``max_lr``/``min_lr``, what the scheduler scales)."""
    return [{key: float(group[key]) for key in ("max_lr", "min_lr") if key in group}
            for group in optimizer.param_groups]


def restore_group_lrs(optimizer, scheduler, configured: list[dict[str, float]]) -> None:
    """Put back the group LRs the config gave the freshly built optimizer, after a load.

    megatron's ``optimizer.load_state_dict`` restores every param group's hyperparameters
    from the checkpoint. Under μP the matrix-like groups' LRs are a function of the width
    (``lr_matrix / fan-in multiplier``): a checkpoint loaded into a wider model (growth, a
    μP transfer) or a resume under changed LRs must run at the new config's LRs, not the
    saved ones. The config is the truth, as for the schedule itself
    (``override_opt_param_scheduler``); the scheduler then re-derives each group's LR.
    """
    groups = optimizer.param_groups
    if len(groups) != len(configured):
        raise RuntimeError(f"the checkpoint's optimizer has {len(groups)} param groups, the config builds "
                           f"{len(configured)}: the μP grouping changed (train.lr, train.lr_matrix, model.mup.*)")
    for group, values in zip(groups, configured):
        group.update(values)
    scheduler.step(increment=0)


def step_with_grad_norm(optimizer, found_inf: bool, grad_norm: float | None) -> tuple[bool, float | None]:
    """megatron's ``optimizer.step()`` for gradients already prepared and measured.

    Spike detection needs the global grad norm *before* deciding whether to update;
    megatron's ``step()`` would then copy the grads and all-reduce the norm a second
    time. This is the rest of its step (clip by the known norm, update), written once
    for plain and chained (μP groups) optimizers the way ``ChainedOptimizer.step`` does.
    """
    from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

    if found_inf:
        return False, None
    for inner in getattr(optimizer, "chained_optimizers", None) or [optimizer]:
        if getattr(inner, "is_stub_optimizer", False) or inner.config.clip_grad <= 0.0:
            continue
        params = inner.get_parameters()
        if params:
            clip_grad_by_total_norm_fp32(
                params, max_norm=inner.config.clip_grad, total_norm=grad_norm,
                use_decoupled_grad=inner.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8)
    return optimizer.step_with_ready_grads(), grad_norm


def _dtype_name(dtypes: set) -> str:
    names = sorted(str(d).removeprefix("torch.") for d in dtypes)
    return "+".join(names) if names else "none"


def describe_optimizer(model_chunks: list, optimizer) -> dict:
    """What this rank actually holds, read off the built objects (not the config).

    ``precision``: dtype of the model parameters, of the DDP gradient buffers the
    backward hooks accumulate into (``param.main_grad``), and of the main parameters
    the optimizer updates (fp32 master weights under bf16).
    ``optimizer_shards``: element counts of this rank's model parameters and of the
    main parameters in its optimizer, for every rank of its data-parallel group (with
    the distributed optimizer they are disjoint 1/DP shards that sum to the model's).
    Collective over the data-parallel group: call it on every rank.
    """
    import torch.distributed as dist
    from megatron.core import parallel_state

    params = [p for chunk in model_chunks for p in chunk.parameters() if p.requires_grad]
    inner = getattr(optimizer, "chained_optimizers", None) or [optimizer]
    main = [p for opt in inner if getattr(opt, "optimizer", None) is not None
            for group in opt.optimizer.param_groups for p in group["params"]]
    model_numel = sum(p.numel() for p in params)
    device = params[0].device if params else torch.device("cpu")
    local = torch.tensor([sum(p.numel() for p in main)], dtype=torch.int64, device=device)
    group = parallel_state.get_data_parallel_group()
    gathered = [torch.zeros_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, local, group=group)
    return {
        "precision": {
            "params": _dtype_name({p.dtype for p in params}),
            "main_grads": _dtype_name({p.main_grad.dtype for p in params if getattr(p, "main_grad", None) is not None}),
            "main_params": _dtype_name({p.dtype for p in main}),
        },
        "optimizer_shards": {
            "distributed": bool(optimizer.config.use_distributed_optimizer) if hasattr(optimizer, "config") else False,
            "data_parallel_size": len(gathered),
            "model_params": model_numel,
            "main_params_per_dp_rank": [int(t.item()) for t in gathered],
        },
    }
