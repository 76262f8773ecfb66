"""``backend=deepspeed``: the same Tele-FLM model, data order and LR schedule under DeepSpeed ZeRO.

What is shared with the megatron backend: the loop and every callback
(:mod:`pretrain.train.loop`: metrics, held-out BPB, spike recovery, fault injection,
z-loss, checkpoint cadence, save-and-requeue on SIGUSR1), config resolution and
validation, process groups + megatron ``parallel_state`` (TP from
``parallel.tensor_model_parallel_size``), the model (``pretrain.model.teleflm.build_model``),
the GPTDataset and the microbatch order (``pretrain.data.microbatches``), the LR
schedule (``pretrain.train.optim.build_scheduler``: megatron's OptimizerParamScheduler,
driven here on DeepSpeed's optimizer param groups, μP per-group ``max_lr``/``min_lr``
included), the per-token loss and its reduction.

What DeepSpeed owns: data-parallel gradient reduction, ZeRO stage 0-3
(``deepspeed.zero_stage``), optimizer offload (``deepspeed.offload_optimizer``),
BF16 (``train.bf16``), gradient clipping (``train.clip_grad``), gradient accumulation
(global / (micro x DP)), and its own checkpoints under ``run_dir/checkpoints_ds/``
(not interchangeable with megatron's dist checkpoints; docs/pretrain_deepspeed.md).

Limits: PP must be 1; TP>1 runs without sequence parallelism (LayerNorm grads
need megatron's SP all-reduce, which DeepSpeed does not do); the gradient norm is
known only after DeepSpeed's step, so spike detection judges the loss (non-finite,
spike, sustained rise) and a dropped update takes DeepSpeed's own overflow-skip path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf, open_dict

DS_CHECKPOINTS = "checkpoints_ds"
LATEST = "latest"


def ds_block(cfg: DictConfig) -> dict[str, Any]:
    block = cfg.deepspeed
    return {"zero_stage": block.zero_stage, "offload_optimizer": block.offload_optimizer,
            "torch_adam": block.torch_adam}


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
    if (checkpoints_root(run_dir) / tag).is_dir():
        return tag
    # gone (moved aside, deleted by hand): the newest finalised one before it, not a fresh start
    from pretrain.config.resolve import finalized_checkpoints

    older = finalized_checkpoints(checkpoints_root(run_dir), before=tag)
    return older[-1].name if older else None


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
    mbs, gbs = t.micro_batch_size, t.global_batch_size
    on_gpu = torch.cuda.is_available()
    torch_adam = (not on_gpu) if block["torch_adam"] is None else block["torch_adam"]
    config: dict[str, Any] = {
        "train_batch_size": gbs,
        "train_micro_batch_size_per_gpu": mbs,
        "gradient_accumulation_steps": gbs // (mbs * dp_size),
        "gradient_clipping": t.clip_grad,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "optimizer": {"type": "AdamW", "params": {
            "lr": t.lr, "betas": [t.adam_beta1, t.adam_beta2],
            "eps": t.adam_eps, "weight_decay": t.weight_decay, "torch_adam": torch_adam}},
        "zero_optimization": {"stage": block["zero_stage"]},
        "bf16": {"enabled": t.bf16},
        # Only DeepSpeed's CPU Adam is "allowed" with offload by default; torch AdamW works too.
        "zero_force_ds_cpu_optimizer": False,
        "zero_allow_untested_optimizer": True,
    }
    if block["offload_optimizer"] == "cpu":
        config["zero_optimization"]["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    return config


def param_groups(cfg: DictConfig, model: torch.nn.Module) -> list[dict[str, Any]]:
    """μP groups (pretrain.model.mup) when μP or train.lr_matrix is on, else one group; each group
    carries max_lr/min_lr, which megatron's OptimizerParamScheduler reads per group."""
    if cfg.model.mup.enabled or cfg.train.lr_matrix is not None:
        from pretrain.model.mup import torch_param_groups

        groups = torch_param_groups(cfg, model)
        return [{k: v for k, v in g.items() if k != "names"} for g in groups]
    return [{"params": [p for p in model.parameters() if p.requires_grad],
             "max_lr": cfg.train.lr, "min_lr": cfg.train.min_lr}]


class DeepSpeedStep:
    """:class:`pretrain.train.backend.TrainStep` on a DeepSpeed engine (ZeRO 0-3)."""

    name = "deepspeed"
    layout = None

    def __init__(self, cfg: DictConfig, engine, optimizer, scheduler) -> None:
        from megatron.core import parallel_state

        from pretrain.train.forward import ForwardHooks

        self.cfg, self.engine, self.optimizer, self.scheduler = cfg, engine, optimizer, scheduler
        self.model = [engine]
        self.hooks = ForwardHooks()
        self.datasets = None
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.dp_size = parallel_state.get_data_parallel_world_size()
        t = cfg.train
        self.micro_batch_size, self.global_batch_size = t.micro_batch_size, t.global_batch_size
        self.num_microbatches = self.global_batch_size // (self.micro_batch_size * self.dp_size)
        self.run_dir = Path(cfg.run_dir)

    def _microbatches(self, dataset, consumed: int) -> Iterator[dict]:
        from pretrain.data import microbatches

        return microbatches(dataset, consumed, self.micro_batch_size, self.num_microbatches,
                            self.dp_rank, self.dp_size)

    def set_global_batch_size(self, global_batch_size: int) -> None:
        """The engine fixes gradient accumulation; validate.py refuses ramps and stage batch sizes."""
        if global_batch_size != self.global_batch_size:
            raise ValueError("backend=deepspeed trains one global batch size (train.global_batch_size)")

    def forward_backward(self, consumed_samples: int) -> float:
        """Every microbatch's backward; DeepSpeed's step at the accumulation boundary is left to
        :meth:`optimizer_step` or :meth:`discard_update`, once the loss has been judged."""
        from pretrain.train.forward import masked_loss, prepare_batch
        from pretrain.train.megatron_step import Wrapping, reduce_losses

        reports = []
        for k, batch in enumerate(self._microbatches(Wrapping(self.datasets.train), consumed_samples)):
            batch = prepare_batch(batch, self.hooks)
            output = self.engine(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
            loss_sum, _, report = masked_loss(batch["loss_mask"], output, self.hooks)
            # Per-microbatch token mean; DeepSpeed divides by the accumulation steps and averages
            # over DP: the megatron backend's loss scaling (loss / tokens / num_microbatches).
            self.engine.backward(loss_sum / batch["loss_mask"].float().sum().clamp(min=1))
            if k < self.num_microbatches - 1:
                self.engine.step()  # not a boundary: DeepSpeed only counts the microbatch
            reports.append({"lm loss": report})
        return reduce_losses(reports)

    def grad_norm(self) -> float | None:
        return None  # DeepSpeed computes it inside its step

    def optimizer_step(self) -> tuple[bool, float]:
        self.engine.step()
        self.scheduler.step(increment=1)
        grad_norm = self.engine.get_global_grad_norm()
        return True, float(grad_norm) if grad_norm is not None else float("nan")

    def discard_update(self) -> None:
        with _forced_overflow(self.engine.optimizer):
            self.engine.step()

    def _forward_only(self, forward_step_func, data_iterator, model, num_microbatches: int, **_unused) -> list:
        """megatron's no-pipelining schedule, forward only, through the engine."""
        iterator = data_iterator[0] if isinstance(data_iterator, list) else data_iterator
        reports = []
        for _ in range(num_microbatches):
            output, loss = forward_step_func(iterator, self.engine)
            reports.append(loss(output)[2])
        return reports

    @torch.no_grad()
    def evaluate(self, iterations: int) -> float:
        from pretrain.train.forward import forward_step
        from pretrain.train.megatron_step import reduce_losses

        self.engine.eval()
        reports = []
        for i in range(iterations):
            reports += self._forward_only(forward_step, self._microbatches(self.datasets.valid, i * self.global_batch_size),
                                          self.model, self.num_microbatches)
        self.engine.train()
        return reduce_losses(reports)

    def score_heldout(self, evaluator) -> dict:
        from pretrain.train.forward import forward_step

        return evaluator.evaluate(self._forward_only, self.model, forward_step)

    def params_synced(self):
        return contextlib.nullcontext()

    # checkpoints ------------------------------------------------------------------
    def save(self, progress) -> Path:
        from pretrain.checkpoint import write_integrity

        root = checkpoints_root(self.run_dir)
        tag = f"iter_{progress.iteration:07d}"
        self.engine.save_checkpoint(str(root), tag=tag, save_latest=False, client_state={
            "iteration": progress.iteration, "consumed_samples": progress.consumed_samples,
            "tokens": progress.tokens, "trainer_state": progress.trainer_state,
            "backend": "deepspeed", "zero_stage": ds_block(self.cfg)["zero_stage"]})
        dist.barrier()  # every rank's shard is on disk before the marker names it
        if dist.get_rank() == 0:
            OmegaConf.save(self.cfg, root / tag / "run_config.yaml", resolve=True)
        dist.barrier()
        write_integrity(root / tag)  # collective: every rank hashes its share of the files
        if dist.get_rank() == 0:
            self.mark_latest(progress.iteration)
            for old in list_ds_checkpoints(self.run_dir)[:-int(self.cfg.checkpoint.keep_last)]:
                if old.name != tag:
                    shutil.rmtree(old, ignore_errors=True)
        dist.barrier()
        return root / tag

    def poll_saves(self) -> None:
        """Saves are synchronous."""

    def wait_for_saves(self) -> None:
        """Saves are synchronous."""

    def close(self) -> None:
        """Nothing in flight."""

    def load(self, path: Path):
        """Verified first against integrity.json (collective); raises CheckpointRejected naming the file."""
        from pretrain.checkpoint import CheckpointRejected, TrainProgress, verify_checkpoint

        problems = verify_checkpoint(path)
        if problems:
            raise CheckpointRejected(path, *problems[0], problems=problems)
        try:
            loaded, client = self.engine.load_checkpoint(str(path.parent), tag=path.name,
                                                         load_lr_scheduler_states=False)
        except Exception as error:  # noqa: BLE001 (re-raised naming the checkpoint)
            # no per-file size map for DeepSpeed's torch.save files: blame a file only via integrity.json
            raise CheckpointRejected(path, ".", f"load failed: {type(error).__name__}: {error}",
                                     blamed=False) from error
        if loaded is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {path}")
        iteration = int(client["iteration"])
        self.scheduler.num_steps = 0
        self.scheduler.step(increment=iteration)
        return TrainProgress(iteration=iteration, consumed_samples=int(client["consumed_samples"]),
                             tokens=int(client["tokens"]), trainer_state=dict(client.get("trainer_state") or {}))

    def list_checkpoints(self) -> list[Path]:
        return list_ds_checkpoints(self.run_dir)

    def checkpoints_root(self) -> Path:
        return checkpoints_root(self.run_dir)

    def mark_latest(self, iteration: int) -> None:
        root = checkpoints_root(self.run_dir)
        tmp = root / f".{LATEST}.tmp"
        tmp.write_text(f"iter_{iteration:07d}\n")
        os.replace(tmp, root / LATEST)


@contextlib.contextmanager
def _forced_overflow(optimizer):
    """Make DeepSpeed's next step take the path of an fp16 overflow: gradients (and ZeRO's
    partitioned buffers) cleared, weights and optimizer state untouched, ``skipped_steps``
    counted. DeepSpeed has no public "drop this step"; this is the one place that asks its
    optimizers for it (ZeRO-1/2: ``check_overflow``; ZeRO-3: the overflow check; no ZeRO:
    a step that does nothing, the engine zeroes the grads afterwards)."""
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    def overflow(*_args, **_kwargs):
        optimizer.overflow = True
        return True

    if isinstance(optimizer, DeepSpeedZeroOptimizer_Stage3):
        def check_and_clean(update_scale=True):
            optimizer.overflow = True
            return optimizer._loss_scale_update_and_overflow_cleanup() if update_scale else True
        patches = {"_overflow_check_and_loss_scale_update": check_and_clean}
    elif isinstance(optimizer, DeepSpeedZeroOptimizer):
        patches = {"check_grad_overflow": True, "check_overflow": overflow}
    else:
        patches = {"step": overflow, "overflow": True}
    saved = {k: optimizer.__dict__[k] for k in patches if k in optimizer.__dict__}
    optimizer.__dict__.update(patches)
    try:
        yield
    finally:
        for key in patches:
            if key in saved:
                optimizer.__dict__[key] = saved[key]
            else:
                optimizer.__dict__.pop(key, None)


def build_deepspeed_step(cfg: DictConfig):
    """(step, progress, resumed): process groups, engine, LR schedule, the checkpoint to resume."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from pretrain.checkpoint import TrainProgress
    from pretrain.train.setup import init_distributed

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

    from pretrain.model.teleflm import build_model
    from pretrain.train.optim import build_scheduler

    rank = dist.get_rank()
    if rank == 0:
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    dist.barrier()
    model = build_model(cfg, pre_process=True, post_process=True)
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    dp_size = parallel_state.get_data_parallel_world_size()
    engine, optimizer, _, _ = deepspeed.initialize(
        model=model, model_parameters=param_groups(cfg, model),
        config=deepspeed_config(cfg, dp_size), mpu=MegatronMpu())
    scheduler = build_scheduler(cfg, optimizer)  # megatron's schedule, on DeepSpeed's param groups
    step = DeepSpeedStep(cfg, engine, optimizer, scheduler)
    progress, load = TrainProgress(), resolve_ds_load(cfg)
    if load is not None:
        from pretrain.checkpoint import resume_with_fallback

        root, tag = load
        # load=auto: a checkpoint with a damaged file is moved aside and the previous one loaded
        progress, loaded = resume_with_fallback(cfg.run_dir, root, root / tag, auto=cfg.checkpoint.load == "auto",
                                                load=step.load)
        if rank == 0:
            print(f"resumed from {loaded} at step {progress.iteration} "
                  f"({progress.consumed_samples} samples consumed)", flush=True)
    return step, progress, load is not None
