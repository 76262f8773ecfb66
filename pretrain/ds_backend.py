"""``backend=deepspeed``: the same Tele-FLM model, data order and LR schedule under DeepSpeed ZeRO.

What is shared with the megatron backend (pretrain/train.py): config resolution and
validation, process groups + megatron ``parallel_state`` (TP from
``parallel.tensor_model_parallel_size``), the model (``pretrain.model.build_model``),
the GPTDataset and the microbatch order (``pretrain.data.microbatches``), the LR
schedule (``pretrain.optim.build_scheduler``: megatron's OptimizerParamScheduler,
driven here on DeepSpeed's optimizer param groups, μP per-group ``max_lr``/``min_lr``
included), the per-token loss and its reduction, and metrics (``RunMonitor``).

What DeepSpeed owns: data-parallel gradient reduction, ZeRO stage 0-3
(``deepspeed.zero_stage``), optimizer offload (``deepspeed.offload_optimizer``),
BF16 (``train.bf16``), gradient clipping (``train.clip_grad``), gradient accumulation
(global / (micro x DP)), and its own checkpoints under ``run_dir/checkpoints_ds/``
(not interchangeable with megatron's dist checkpoints; docs/pretrain_deepspeed.md).

Limits: PP must be 1; TP>1 runs without sequence parallelism (LayerNorm grads
need megatron's SP all-reduce, which DeepSpeed does not do).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf, open_dict

DS_CHECKPOINTS = "checkpoints_ds"
LATEST = "latest"


def ds_block(cfg: DictConfig) -> dict[str, Any]:
    block = OmegaConf.select(cfg, "deepspeed") or {}
    block = OmegaConf.to_container(block, resolve=True) if isinstance(block, DictConfig) else dict(block)
    return {"zero_stage": int(block.get("zero_stage", 1)),
            "offload_optimizer": str(block.get("offload_optimizer", "none") or "none"),
            "torch_adam": block.get("torch_adam")}


def checkpoints_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / DS_CHECKPOINTS


def list_ds_checkpoints(run_dir: str | Path) -> list[Path]:
    root = checkpoints_root(run_dir)
    return sorted(p for p in root.glob("iter_*") if p.is_dir()) if root.is_dir() else []


def latest_tag(run_dir: str | Path) -> str | None:
    marker = checkpoints_root(run_dir) / LATEST
    if not marker.is_file():
        return None
    tag = marker.read_text().strip()
    return tag if (checkpoints_root(run_dir) / tag).is_dir() else None


def resolve_ds_load(cfg: DictConfig) -> tuple[Path, str] | None:
    """(checkpoint root, tag) to resume from: ``checkpoint.load`` auto | none | a tag directory."""
    load = cfg.checkpoint.load
    if load in (None, "none", False):
        return None
    if load == "auto":
        tag = latest_tag(cfg.run_dir)
        return (checkpoints_root(cfg.run_dir), tag) if tag else None
    path = Path(load)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint.load='{load}' is not a directory")
    if (path / LATEST).is_file():  # a checkpoints_ds/ root
        return path, (path / LATEST).read_text().strip()
    return path.parent, path.name


class MegatronMpu:
    """The ``mpu`` DeepSpeed asks for, answered by megatron's ``parallel_state``."""

    def __init__(self) -> None:
        from megatron.core import parallel_state

        self.ps = parallel_state

    def get_model_parallel_rank(self) -> int:
        return self.ps.get_tensor_model_parallel_rank()

    def get_model_parallel_world_size(self) -> int:
        return self.ps.get_tensor_model_parallel_world_size()

    def get_model_parallel_group(self):
        return self.ps.get_tensor_model_parallel_group()

    # DeepSpeed also probes the tensor-parallel names.
    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_group = get_model_parallel_group

    def get_data_parallel_rank(self) -> int:
        return self.ps.get_data_parallel_rank()

    def get_data_parallel_world_size(self) -> int:
        return self.ps.get_data_parallel_world_size()

    def get_data_parallel_group(self):
        return self.ps.get_data_parallel_group()

    def get_pipeline_model_parallel_rank(self) -> int:
        return 0

    def get_pipeline_model_parallel_world_size(self) -> int:
        return 1


def deepspeed_config(cfg: DictConfig, dp_size: int) -> dict[str, Any]:
    t = cfg.train
    block = ds_block(cfg)
    mbs, gbs = int(t.micro_batch_size), int(t.global_batch_size)
    on_gpu = torch.cuda.is_available()
    torch_adam = (not on_gpu) if block["torch_adam"] is None else bool(block["torch_adam"])
    config: dict[str, Any] = {
        "train_batch_size": gbs,
        "train_micro_batch_size_per_gpu": mbs,
        "gradient_accumulation_steps": gbs // (mbs * dp_size),
        "gradient_clipping": float(t.clip_grad),
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "optimizer": {"type": "AdamW", "params": {
            "lr": float(t.lr), "betas": [float(t.adam_beta1), float(t.adam_beta2)],
            "eps": float(t.adam_eps), "weight_decay": float(t.weight_decay), "torch_adam": torch_adam}},
        "zero_optimization": {"stage": block["zero_stage"]},
        "bf16": {"enabled": bool(t.bf16)},
        # Only DeepSpeed's CPU Adam is "allowed" with offload by default; torch AdamW works too.
        "zero_force_ds_cpu_optimizer": False,
        "zero_allow_untested_optimizer": True,
    }
    if block["offload_optimizer"] == "cpu":
        config["zero_optimization"]["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    return config


def param_groups(cfg: DictConfig, model: torch.nn.Module) -> list[dict[str, Any]]:
    """μP groups (pretrain.mup) when μP or train.lr_matrix is on, else one group; each group
    carries max_lr/min_lr, which megatron's OptimizerParamScheduler reads per group."""
    if (OmegaConf.select(cfg, "model.mup.enabled", default=False)
            or OmegaConf.select(cfg, "train.lr_matrix") is not None):
        from pretrain.mup import torch_param_groups

        groups = torch_param_groups(cfg, model)
        return [{k: v for k, v in g.items() if k != "names"} for g in groups]
    return [{"params": [p for p in model.parameters() if p.requires_grad],
             "max_lr": float(cfg.train.lr), "min_lr": float(cfg.train.min_lr)}]


def _reduce_loss(loss_sum: float, tokens: float) -> float:
    """Mean token loss over the global batch (TP rank 0 of each DP rank contributes)."""
    from megatron.core import parallel_state

    total = torch.tensor([loss_sum, tokens], dtype=torch.float64)
    if parallel_state.get_tensor_model_parallel_rank() != 0:
        total.zero_()
    if torch.cuda.is_available():
        total = total.cuda()
    dist.all_reduce(total)
    return (total[0] / total[1].clamp(min=1)).item()


def run_deepspeed(cfg: DictConfig) -> dict[str, Any] | None:
    """Train per ``cfg`` under DeepSpeed; the summary on global rank 0 (None elsewhere)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from pretrain.cpu_shims import activate_cpu_shims
    from pretrain.data import build_datasets, microbatches, read_manifest
    from pretrain.run_config import resolve_config
    from pretrain.train import device, flops_per_token, init_distributed, peak_tflops, world_size_from_env
    from pretrain.validate import validate

    activate_cpu_shims()
    logging.getLogger("megatron").setLevel(logging.WARNING)
    manifest = read_manifest(cfg.data.path)
    cfg = resolve_config(cfg, manifest, None)
    validate(cfg, world_size_from_env(), manifest)
    with open_dict(cfg):
        cfg.parallel.sequence_parallel = False  # see module docstring
    init_distributed(cfg)

    import deepspeed
    from megatron.core import parallel_state

    if os.environ.get("PRETRAIN_DS_NO_SHM") == "1":
        # Skip the JIT build of DeepSpeed's CPU shared-memory allreduce (~80 s; tests): gloo only.
        import importlib

        # (not `import deepspeed.comm.torch as m`: deepspeed.comm's `torch` attribute is torch itself)
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)

    from pretrain.flops import mfu as mfu_of
    from pretrain.metrics import RunMonitor, memory_gb
    from pretrain.model import build_model
    from pretrain.optim import build_scheduler

    rank = dist.get_rank()
    run_dir = Path(cfg.run_dir)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()

    model = build_model(cfg, pre_process=True, post_process=True)
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    dp_size = parallel_state.get_data_parallel_world_size()
    dp_rank = parallel_state.get_data_parallel_rank()
    engine, optimizer, _, _ = deepspeed.initialize(
        model=model, model_parameters=param_groups(cfg, model),
        config=deepspeed_config(cfg, dp_size), mpu=MegatronMpu())
    scheduler = build_scheduler(cfg, optimizer)  # megatron's schedule, on DeepSpeed's param groups

    iteration, consumed, tokens = 0, 0, 0
    load = resolve_ds_load(cfg)
    if load is not None:
        root, tag = load
        path, client = engine.load_checkpoint(str(root), tag=tag, load_lr_scheduler_states=False)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {root / tag}")
        iteration, consumed, tokens = (int(client["iteration"]), int(client["consumed_samples"]),
                                       int(client["tokens"]))
        scheduler.step(increment=iteration)
        if rank == 0:
            print(f"resumed from {root / tag} at step {iteration} ({consumed} samples consumed)", flush=True)

    datasets = build_datasets(cfg, manifest, run_dir / "data_cache")
    t = cfg.train
    mbs, gbs = int(t.micro_batch_size), int(t.global_batch_size)
    num_micro = gbs // (mbs * dp_size)
    train_iters = int(t.train_iters)
    tokens_per_step = gbs * int(cfg.model.seq_length)
    fpt, peak = flops_per_token(cfg), peak_tflops()
    world = dist.get_world_size()
    monitor = RunMonitor(cfg, cfg, iteration, train_iters) if rank == 0 else None
    save_interval = int(cfg.checkpoint.save_interval or 0)
    keep_last = int(cfg.checkpoint.keep_last)
    eval_interval = int(t.eval_interval or 0) if datasets.valid is not None else 0
    wall_start = time.time()

    def forward(batch: dict) -> tuple[torch.Tensor, float, float]:
        batch = {k: v.to(device()) for k, v in batch.items()}
        losses = engine(batch["tokens"], batch["position_ids"], None, labels=batch["labels"]).float()
        mask = batch["loss_mask"].float()
        loss_sum = torch.sum(losses.view(-1) * mask.view(-1))
        count = mask.sum()
        # Per-microbatch token mean; DeepSpeed divides by the accumulation steps and averages
        # over DP: the megatron backend's loss scaling (loss / tokens / num_microbatches).
        return loss_sum / count.clamp(min=1), float(loss_sum.detach()), float(count)

    def save() -> Path:
        root = checkpoints_root(run_dir)
        tag = f"iter_{iteration:07d}"
        engine.save_checkpoint(str(root), tag=tag, save_latest=False, client_state={
            "iteration": iteration, "consumed_samples": consumed, "tokens": tokens,
            "backend": "deepspeed", "zero_stage": ds_block(cfg)["zero_stage"]})
        dist.barrier()  # every rank's shard is on disk before the marker names it
        if rank == 0:
            OmegaConf.save(cfg, root / tag / "run_config.yaml", resolve=True)
            tmp = root / f".{LATEST}.tmp"
            tmp.write_text(tag + "\n")
            os.replace(tmp, root / LATEST)
            for old in list_ds_checkpoints(run_dir)[:-keep_last]:
                if old.name != tag:
                    shutil.rmtree(old, ignore_errors=True)
        dist.barrier()
        return root / tag

    @torch.no_grad()
    def evaluate() -> float:
        engine.eval()
        loss_sum = count = 0.0
        for i in range(int(t.eval_iters)):
            for batch in microbatches(datasets.valid, i * gbs, mbs, num_micro, dp_rank, dp_size):
                _, s, c = forward(batch)
                loss_sum, count = loss_sum + s, count + c
        engine.train()
        return _reduce_loss(loss_sum, count)

    last_saved = iteration if load is not None else -1
    engine.train()
    while iteration < train_iters:
        lr = float(scheduler.get_lr({}))  # the reference LR this step uses (train.lr's group)
        step_start = time.perf_counter()
        loss_sum = count = 0.0
        for batch in microbatches(datasets.train, consumed, mbs, num_micro, dp_rank, dp_size):
            loss, s, c = forward(batch)
            engine.backward(loss)
            engine.step()  # applies the update at the accumulation boundary only
            loss_sum, count = loss_sum + s, count + c
        skipped = False  # no loss scaler (fp32/bf16): DeepSpeed never skips a step
        scheduler.step(increment=1)
        grad_norm = engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        loss_value = _reduce_loss(loss_sum, count)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        step_time = time.perf_counter() - step_start
        iteration += 1
        consumed += gbs
        tokens += tokens_per_step
        tokens_per_s = tokens_per_step / step_time
        if monitor is not None:
            monitor.log_step({
                "step": iteration, "loss": loss_value, "grad_norm": grad_norm, "lr": lr,
                "tokens_per_s": tokens_per_s, "consumed_samples": consumed, "tokens": tokens,
                "tflops_per_gpu": fpt * tokens_per_s / world / 1e12 if fpt else None,
                "mfu": mfu_of(tokens_per_s / world, fpt, peak) if peak and fpt else None,
                "mem_gb": memory_gb(), "step_time_s": step_time, "skipped": skipped,
                "elapsed_s": time.time() - wall_start,
            })
        if eval_interval and iteration % eval_interval == 0:
            eval_loss = evaluate()
            if monitor is not None:
                monitor.log_eval(iteration, eval_loss)
        if (save_interval and iteration % save_interval == 0) or iteration == train_iters:
            path = save()
            last_saved = iteration
            if monitor is not None:
                monitor.event("checkpoint", iteration, path=str(path))
    if last_saved != iteration:
        save()
    summary = None
    if monitor is not None:
        summary = monitor.finish([p.name for p in list_ds_checkpoints(run_dir)])
        summary["backend"] = "deepspeed"
        from pretrain.metrics import SUMMARY

        (run_dir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    dist.barrier()
    return summary
