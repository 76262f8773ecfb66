"""The training loop: megatron-core schedules, DDP, distributed optimizer, checkpoints.

One call of :func:`run` per process (torchrun starts TP×PP×DP of them).
Order matters and is kept explicit: resolve + validate the config (no process
group yet), start the process groups, build model chunks → DDP → optimizer →
scheduler, restore a checkpoint, then loop.
"""

from __future__ import annotations

import logging
import os
import random
import time
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from pretrain.checkpoint import CheckpointWriter, TrainProgress, load_checkpoint
from pretrain.cpu_shims import activate_cpu_shims
from pretrain.data import build_datasets, microbatches, read_manifest
from pretrain.growth.masked import growth_block, ramp_for, set_ramp
from pretrain.heldout_eval import HeldoutEvaluator, eval_forward_step
from pretrain.run_config import resolve_config, resolve_load_dir
from pretrain import spikes
from pretrain.validate import validate

# Grown stages (cfg.growth) train here with MSG masks; pretrain.growth's runner checks this.
GROWTH_AWARE = True


# ----------------------------------------------------------------------------
# Config resolution (before any process group)
# ----------------------------------------------------------------------------


def world_size_from_env() -> int | None:
    return int(os.environ["WORLD_SIZE"]) if "WORLD_SIZE" in os.environ else None


# ----------------------------------------------------------------------------
# Setup
# ----------------------------------------------------------------------------

def device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(cfg: DictConfig) -> None:
    from megatron.core import parallel_state, tensor_parallel

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        if "RANK" not in os.environ:  # a plain single-process run: be our own rendezvous
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                timeout=timedelta(minutes=30))
    p = cfg.parallel
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=int(p.tensor_model_parallel_size),
        pipeline_model_parallel_size=int(p.pipeline_model_parallel_size),
        virtual_pipeline_model_parallel_size=p.virtual_pipeline_model_parallel_size or None,
    )
    seed = int(cfg.train.seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def build_model_chunks(cfg: DictConfig) -> list[torch.nn.Module]:
    """This rank's model chunks (one per virtual pipeline stage), DDP-wrapped."""
    from megatron.core import parallel_state
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.transformer.module import Float16Module

    from pretrain.growth.masked import build_masked_model
    from pretrain.model import build_model

    # A grown stage (cfg.growth, docs/growth.md) builds the MSG-masked model; same state dict.
    builder = build_masked_model if growth_block(cfg) is not None else build_model
    vpp = cfg.parallel.virtual_pipeline_model_parallel_size or None
    chunks = []
    for vp in range(vpp or 1):
        vp_stage = vp if vpp else None
        chunk = builder(
            cfg,
            pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
            post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
            vp_stage=vp_stage)
        if torch.cuda.is_available():
            chunk.cuda(torch.cuda.current_device())
        chunks.append(chunk)
    config = chunks[0].config
    if cfg.train.bf16:
        chunks = [Float16Module(config, chunk) for chunk in chunks]
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=bool(cfg.train.overlap_grad_reduce),
        overlap_param_gather=bool(cfg.train.overlap_param_gather) and bool(cfg.parallel.use_distributed_optimizer),
        use_distributed_optimizer=bool(cfg.parallel.use_distributed_optimizer),
        # With spike recovery on, a NaN gradient is a handled event (skip/rollback), not a crash.
        check_for_nan_in_grad=not spikes.spike_config_from(cfg).enabled,
    )
    wrapped = [DistributedDataParallel(config=config, ddp_config=ddp_config, module=chunk,
                                       disable_bucketing=i > 0)
               for i, chunk in enumerate(chunks)]
    for chunk in wrapped:
        chunk.broadcast_params()
    if float(cfg.train.get("z_loss") or 0.0) > 0:  # PaLM z-loss: tap log Z off the (last hooked) logits
        spikes.Z_LOSS_COEFF = float(cfg.train.z_loss)
        for chunk in chunks:
            inner = chunk.module if isinstance(chunk, Float16Module) else chunk
            if getattr(inner, "post_process", False):
                inner.output_layer.register_forward_hook(spikes.Z_LOSS_TAP)
    return wrapped


def wire_schedule_hooks(model: list, optimizer, cfg: DictConfig) -> None:
    """Tell the pipeline schedule how to scale the loss and when to sync grads/params."""
    from megatron.core.distributed import finalize_model_grads

    config = model[0].config
    config.grad_scale_func = optimizer.scale_loss
    config.finalize_model_grads_func = finalize_model_grads
    if cfg.train.overlap_grad_reduce:
        no_sync = [chunk.no_sync for chunk in model]
        config.no_sync_func = no_sync[0] if len(model) == 1 else no_sync
    if cfg.train.overlap_param_gather and cfg.parallel.use_distributed_optimizer:
        param_sync = [chunk.start_param_sync for chunk in model]
        config.param_sync_func = param_sync[0] if len(model) == 1 else param_sync


class ParamsSynced:
    """With overlapped param gathers the weights are only complete after the next
    forward's pre-hook; force the gather before checkpointing or evaluating."""

    def __init__(self, model: list, enabled: bool) -> None:
        self.model, self.enabled = model, enabled

    def __enter__(self):
        if self.enabled:
            for chunk in self.model:
                chunk.disable_forward_pre_hook(param_sync=True)

    def __exit__(self, *exc):
        if self.enabled:
            for chunk in self.model:
                chunk.enable_forward_pre_hook()


# ----------------------------------------------------------------------------
# One step
# ----------------------------------------------------------------------------

def loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """(sum of token losses, token count, report) — megatron averages per token."""
    losses = output_tensor.float()
    if spikes.FAULT_NOW == "nan":  # train.fault.kind=nan (docs/spikes.md)
        losses = losses * float("nan")
    loss_mask = loss_mask.float()
    loss_sum = torch.sum(losses.view(-1) * loss_mask.view(-1))
    num_tokens = loss_mask.sum().to(torch.int)
    report = torch.stack([loss_sum.detach().clone(), loss_mask.sum().detach()])  # CE only
    if spikes.Z_LOSS_TAP.pending:  # train.z_loss > 0, training forward
        z = spikes.Z_LOSS_TAP.pending.pop(0)
        loss_sum = loss_sum + spikes.Z_LOSS_COEFF * torch.sum(z.view(-1) ** 2 * loss_mask.view(-1))
    return loss_sum, num_tokens, {"lm loss": report}


def forward_step(data_iterator: Iterator, model: torch.nn.Module):
    batch = {k: v.to(device(), non_blocking=True) for k, v in next(data_iterator).items()}
    if spikes.FAULT_NOW == "corrupt_batch":  # garbage tokens and targets, same on every rank
        gen = torch.Generator().manual_seed(0)
        for key in ("tokens", "labels"):
            batch[key] = torch.randint(3, 64, batch[key].shape, generator=gen).to(batch[key])
    output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    return output, partial(loss_func, batch["loss_mask"])


def reduce_losses(losses: list[dict]) -> float:
    """Mean token loss of the global batch, known on every rank afterwards."""
    from megatron.core import parallel_state

    total = torch.zeros(2, dtype=torch.float64, device=device())
    if parallel_state.is_pipeline_last_stage(ignore_virtual=True) and \
            parallel_state.get_tensor_model_parallel_rank() == 0:
        for item in losses:
            total += item["lm loss"].to(total)
    dist.all_reduce(total)
    return (total[0] / total[1].clamp(min=1)).item()


class _Wrapping:
    """Sample indices past the planned stream (after spike data skips) wrap to its start."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __getitem__(self, index: int):
        return self.dataset[index % len(self.dataset)]


class Trainer:
    def __init__(self, cfg: DictConfig, model: list, optimizer, scheduler, datasets) -> None:
        from megatron.core import parallel_state
        from megatron.core.pipeline_parallel import get_forward_backward_func

        self.cfg, self.model, self.optimizer, self.scheduler = cfg, model, optimizer, scheduler
        self.datasets = datasets
        self.forward_backward = get_forward_backward_func()
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.dp_size = parallel_state.get_data_parallel_world_size()
        t = cfg.train
        self.micro_batch_size = int(t.micro_batch_size)
        self.global_batch_size = int(t.global_batch_size)
        self.num_microbatches = self.global_batch_size // (self.micro_batch_size * self.dp_size)
        self.seq_length = int(cfg.model.seq_length)

    def _iterators(self, dataset, consumed: int) -> list[Iterator]:
        # Each virtual stage's chunk consumes the same microbatch sequence.
        return [microbatches(dataset, consumed, self.micro_batch_size, self.num_microbatches,
                             self.dp_rank, self.dp_size) for _ in self.model]

    def train_step(self, consumed_samples: int, guard=None, iteration: int = 0) -> tuple[float, float, bool]:
        for chunk in self.model:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        losses = self.forward_backward(
            forward_step_func=forward_step,
            data_iterator=self._iterators(_Wrapping(self.datasets.train), consumed_samples),
            model=self.model, num_microbatches=self.num_microbatches, seq_length=self.seq_length,
            micro_batch_size=self.micro_batch_size, forward_only=False)
        loss = reduce_losses(losses)
        self.verdict, self.action = None, spikes.Action.CONTINUE
        if guard is not None and guard.detecting:
            # Judge before stepping: the global grad norm of the unclipped grads, then step or drop them.
            found_inf = self.optimizer.prepare_grads()
            norm = float("nan") if found_inf else self.optimizer.get_grad_norm()
            self.verdict, self.action = guard.judge(iteration, loss, float(norm) if norm is not None else None)
            if self.action is not spikes.Action.CONTINUE:
                return loss, float(norm) if norm is not None else float("nan"), False
        updated, grad_norm, _ = self.optimizer.step()
        if updated:
            self.scheduler.step(increment=1)
        return loss, float(grad_norm) if grad_norm is not None else float("nan"), updated

    @torch.no_grad()
    def evaluate(self) -> float:
        for chunk in self.model:
            chunk.eval()
        losses: list[dict] = []
        for i in range(int(self.cfg.train.eval_iters)):
            losses += self.forward_backward(
                forward_step_func=forward_step,
                data_iterator=self._iterators(self.datasets.valid, i * self.global_batch_size),
                model=self.model, num_microbatches=self.num_microbatches, seq_length=self.seq_length,
                micro_batch_size=self.micro_batch_size, forward_only=True)
        for chunk in self.model:
            chunk.train()
        return reduce_losses(losses)


# ----------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------

def flops_per_token(cfg: DictConfig) -> float | None:
    try:
        from pretrain.flops import model_flops_per_token
    except ImportError:
        return None
    return model_flops_per_token(OmegaConf.to_container(cfg.model, resolve=True), int(cfg.model.seq_length),
                                 padded_vocab=int(cfg.model.padded_vocab_size))


def peak_tflops() -> float | None:
    try:
        from pretrain.flops import detect_peak_bf16_tflops
    except ImportError:
        return None
    return detect_peak_bf16_tflops()


def reference_lr(scheduler, optimizer) -> float:
    """The schedule's LR for ``train.lr`` (μP groups scale it per group)."""
    try:
        return float(scheduler.get_lr({}))
    except (TypeError, AttributeError):
        return float(optimizer.param_groups[0]["lr"])


def preemption_flag():
    try:
        from launch.preemption import install_preemption_handler
    except ImportError:
        return None
    return install_preemption_handler()


def run(cfg: DictConfig) -> dict[str, Any] | None:
    """Train per ``cfg``; returns the summary on global rank 0 (None elsewhere)."""
    activate_cpu_shims()
    # megatron logs every dataset index build at INFO; keep the console for the run itself.
    logging.getLogger("megatron").setLevel(logging.WARNING)
    manifest = read_manifest(cfg.data.path)
    load_dir = resolve_load_dir(cfg)
    cfg = resolve_config(cfg, manifest, load_dir)
    validate(cfg, world_size_from_env(), manifest)
    init_distributed(cfg)

    from megatron.core.num_microbatches_calculator import init_num_microbatches_calculator, \
        unset_num_microbatches_calculator

    from pretrain.metrics import RunMonitor, memory_gb
    from pretrain.optim import build_optimizer, build_scheduler, describe_optimizer

    rank = dist.get_rank()
    run_dir = Path(cfg.run_dir)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    unset_num_microbatches_calculator()
    init_num_microbatches_calculator(rank, None, int(cfg.train.global_batch_size),
                                     int(cfg.train.micro_batch_size), int(cfg.parallel.data_parallel_size))

    model = build_model_chunks(cfg)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    wire_schedule_hooks(model, optimizer, cfg)
    layout = describe_optimizer(model, optimizer)  # collective; rank 0 logs it on the start row
    params_synced = ParamsSynced(model, bool(cfg.train.overlap_param_gather and cfg.parallel.use_distributed_optimizer))

    progress = TrainProgress()
    guard = spikes.SpikeGuard(cfg, run_dir, rank)
    if load_dir is not None:
        progress = load_checkpoint(load_dir, model, optimizer, scheduler, cfg)
        guard.load_state_dict(getattr(progress, "trainer_state", None) and progress.trainer_state.get("spikes"))
        if rank == 0:
            print(f"resumed from {load_dir} at step {progress.iteration} "
                  f"({progress.consumed_samples} samples consumed)", flush=True)
    datasets = build_datasets(cfg, manifest, run_dir / "data_cache")
    trainer = Trainer(cfg, model, optimizer, scheduler, datasets)
    writer = CheckpointWriter(cfg, cfg, async_save=bool(cfg.checkpoint.async_save))
    heldout = HeldoutEvaluator(manifest, int(cfg.model.seq_length), int(cfg.train.micro_batch_size),
                               cfg.train.get("heldout_max_documents"))
    bpb_interval = int(cfg.train.get("bpb_interval") or 0)

    def evaluate_heldout() -> None:
        """Whole held-out documents by language and source: loss, perplexity, bits per byte."""
        if heldout.empty:
            return
        with params_synced:
            results = heldout.evaluate(trainer.forward_backward, model, eval_forward_step)
        if monitor is not None:
            monitor.log_heldout(progress.iteration, results)

    preemption = preemption_flag()

    t = cfg.train
    train_iters = int(t.train_iters)
    tokens_per_step = int(t.global_batch_size) * int(cfg.model.seq_length)
    fpt, peak = flops_per_token(cfg), peak_tflops()
    world = dist.get_world_size()
    monitor = RunMonitor(cfg, cfg, progress.iteration, train_iters, layout) if rank == 0 else None
    save_interval = int(cfg.checkpoint.save_interval or 0)
    eval_interval = int(t.eval_interval or 0) if datasets.valid is not None else 0
    wall_start = time.time()
    last_saved = progress.iteration if load_dir is not None else -1

    growing = growth_block(cfg) is not None
    while progress.iteration < train_iters:
        if growing:  # MSG mask value: a function of the iteration (resumes mid-ramp exactly)
            set_ramp(model, ramp_for(cfg, progress.iteration))
        progress.consumed_samples, replayed = guard.replay_position(progress.consumed_samples)
        if replayed is not None:
            guard.skipped.append(replayed)
            spike_event(monitor, guard, "replay_skip", progress.iteration + 1, skipped_samples=replayed)
        fault = guard.begin_step(progress.iteration + 1)
        lr_factor = guard.apply_lr(optimizer, scheduler, progress.iteration + 1)
        lr = reference_lr(scheduler, optimizer) * lr_factor  # the LR this step uses
        step_start = time.perf_counter()
        loss, grad_norm, updated = trainer.train_step(progress.consumed_samples, guard, progress.iteration + 1)
        guard.end_step()
        if fault is not None:
            spike_event(monitor, guard, "fault", progress.iteration + 1, kind=fault, loss=loss, grad_norm=grad_norm)
        if trainer.action is not spikes.Action.CONTINUE:
            last_saved = recover(trainer.action, trainer.verdict, progress, guard, monitor, writer, model,
                                 optimizer, scheduler, cfg, last_saved, loss, grad_norm)
            continue
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        step_time = time.perf_counter() - step_start
        progress.iteration += 1
        progress.consumed_samples += int(t.global_batch_size)
        progress.tokens += tokens_per_step
        tokens_per_s = tokens_per_step / step_time
        tflops = fpt * tokens_per_s / world / 1e12 if fpt else None
        if monitor is not None:
            from pretrain.flops import mfu as mfu_of

            monitor.log_step({
                "step": progress.iteration, "loss": loss, "grad_norm": grad_norm,
                "lr": lr, "tokens_per_s": tokens_per_s,
                "consumed_samples": progress.consumed_samples, "tokens": progress.tokens,
                "tflops_per_gpu": tflops, "mfu": mfu_of(tokens_per_s / world, fpt, peak) if peak and fpt else None,
                "mem_gb": memory_gb(), "step_time_s": step_time, "skipped": not updated,
                "elapsed_s": time.time() - wall_start,
            })
        writer.poll()
        if eval_interval and progress.iteration % eval_interval == 0:
            with params_synced:
                eval_loss = trainer.evaluate()
            if monitor is not None:
                monitor.log_eval(progress.iteration, eval_loss)
        if bpb_interval and progress.iteration % bpb_interval == 0 and progress.iteration < train_iters:
            evaluate_heldout()
        preempted = preemption is not None and preemption.should_save_and_exit_all_ranks()
        if (save_interval and progress.iteration % save_interval == 0) or preempted \
                or progress.iteration == train_iters:
            progress.trainer_state = {"spikes": guard.state_dict()}
            with params_synced:
                path = writer.save(model, optimizer, scheduler, progress)
            last_saved = progress.iteration
            if monitor is not None:
                monitor.event("checkpoint", progress.iteration, path=str(path))
        if preempted:
            writer.close()
            preemption.exit_for_requeue()
    if last_saved != progress.iteration:
        progress.trainer_state = {"spikes": guard.state_dict()}
        with params_synced:
            writer.save(model, optimizer, scheduler, progress)
    evaluate_heldout()
    writer.close()
    summary = None
    if monitor is not None:
        from pretrain.checkpoint import list_checkpoints

        summary = monitor.finish([p.name for p in list_checkpoints(run_dir)])
    dist.barrier()
    return summary


def spike_event(monitor, guard, name: str, step: int, **fields) -> None:
    """One spike-related event: spikes.jsonl, metrics.jsonl (event row) and W&B."""
    fields = {k: (v.value if isinstance(v, spikes.Enum) else v) for k, v in fields.items()}
    guard.log({"event": name, "step": step, **fields})
    if monitor is not None:
        monitor.event(name, step, **fields)
        wandb = getattr(monitor, "_wandb", None)
        if wandb is not None:
            wandb.log({f"spikes/{name}": 1, **{f"spikes/{k}": v for k, v in fields.items()
                                             if isinstance(v, (int, float)) and not isinstance(v, bool)}})


def _rollback_target(run_dir: Path, spike_step: int, before: int) -> tuple[Path | None, str]:
    from pretrain.checkpoint import list_checkpoints

    found = [(int(p.name.split("_")[-1]), p) for p in list_checkpoints(run_dir)]
    found = [(i, p) for i, p in found if i < spike_step]
    if not found:
        return None, "no checkpoint before the spike"
    good = [(i, p) for i, p in found if i <= spike_step - before]
    if good:
        return good[-1][1], f"newest checkpoint at least {before} steps before the spike"
    return found[0][1], f"no checkpoint {before} steps before the spike: the oldest kept one"


def recover(action, verdict, progress, guard, monitor, writer, model, optimizer, scheduler, cfg,
            last_saved: int, loss: float, grad_norm: float) -> int:
    """Carry out the planner's action for a flagged step (no update was applied); returns last_saved."""
    from pretrain.checkpoint import checkpoint_name, checkpoints_root, write_latest_marker

    step = progress.iteration + 1
    gbs = int(cfg.train.global_batch_size)
    batch = [progress.consumed_samples, progress.consumed_samples + gbs]
    common = dict(signal=verdict.signal, detail=verdict.detail, action=action, loss=loss, grad_norm=grad_norm)
    if action is spikes.Action.STOP:
        message = (f"loss-spike recovery gave up at step {step}: {verdict.signal.value} ({verdict.detail}); "
                   f"{len(guard.planner.events)} flagged steps within {guard.config.recovery_window} steps "
                   f"(max_recoveries={guard.config.max_recoveries}). Look at {Path(cfg.run_dir) / 'spikes.jsonl'}, "
                   f"the data around samples {batch}, the LR schedule and the grad norms in metrics.jsonl.")
        spike_event(monitor, guard, "spike_stop", step, samples=batch, message=message, **common)
        writer.close()
        raise spikes.SpikeStop(message)
    guard.recoveries += 1
    if action is spikes.Action.ROLLBACK:
        writer.wait()
        dist.barrier()
        run_dir = Path(cfg.run_dir)
        target, why = _rollback_target(run_dir, step, guard.config.rollback_steps_before)
        if target is not None:
            scheduler.num_steps = 0  # megatron's scheduler load *adds* the saved step count
            loaded = load_checkpoint(target, model, optimizer, scheduler, cfg)
            resume_at = batch[1] + guard.config.skip_batches * gbs
            skipped = [loaded.consumed_samples, resume_at]
            guard.skipped.append(skipped)
            dist.barrier()
            if dist.get_rank() == 0:  # the abandoned trajectory's later checkpoints step aside
                abandoned = run_dir / "checkpoints_abandoned" / f"spike_step{step}"
                for later in checkpoints_root(run_dir).glob("iter_*"):
                    if int(later.name.split("_")[-1]) > loaded.iteration:
                        abandoned.mkdir(parents=True, exist_ok=True)
                        later.rename(abandoned / later.name)
                write_latest_marker(run_dir, loaded.iteration)
            dist.barrier()
            spike_event(monitor, guard, "spike_rollback", step, samples=batch, checkpoint=target.name,
                        checkpoint_iteration=loaded.iteration, why=why, skipped_samples=skipped,
                        tokens_skipped=(skipped[1] - skipped[0]) * int(cfg.model.seq_length), **common)
            progress.iteration, progress.tokens = loaded.iteration, loaded.tokens
            progress.consumed_samples = resume_at
            return loaded.iteration
        common["detail"] += f"; rollback impossible ({why}): update skipped instead"
        action = spikes.Action.SKIP_UPDATE
    if action is spikes.Action.LOWER_LR:
        guard.lr_scale_until = step + guard.config.lr_steps
    guard.skipped.append(batch)
    progress.consumed_samples = batch[1]
    spike_event(monitor, guard, "spike_" + action.value, step, samples=batch, skipped_samples=batch,
                lr_scale_until=guard.lr_scale_until, **common)
    return last_saved


def shutdown() -> None:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
