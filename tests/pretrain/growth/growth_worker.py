"""Growth scenarios under torchrun (2 processes, gloo): train, checkpoint, grow, reload, compare.

Each scenario: train the old model a few steps at one TP/PP/DP layout, write a
trainer checkpoint, grow it offline (``grow_checkpoint``), load the grown
checkpoint at a (possibly different) layout into the masked model, and record
the loss on a fixed batch before and after growth, then the training losses
that follow, a mid-ramp resume, and (once the ramp is over) the loss of the
same checkpoint in the plain model.  Rank 0 writes the figures to a JSON file
the pytest side asserts on.

Usage: torchrun --nproc_per_node=2 tests/pretrain/growth/growth_worker.py OUT_DIR SCENARIO[,SCENARIO...] [SPEC]

SPEC is ``train.gpu.spec`` (``local`` default, or ``transformer_engine``): which layer spec the
old and the masked model are built on.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

VOCAB, SEQ, MBS, GBS = 256, 32, 2, 4
BASE_MODEL = dict(name="growth_test", num_layers=2, hidden_size=64, num_attention_heads=2, num_query_groups=2,
                  kv_channels=32, ffn_hidden_size=96, vocab_size=VOCAB, padded_vocab_size=VOCAB,
                  make_vocab_size_divisible_by=128, seq_length=SEQ, rotary_base=10000, norm_epsilon=1e-5,
                  init_method_std=0.02, embedding_init_std=0.02, truncated_normal_init=True, input_mult=1.0,
                  output_mult=1.0, mup=dict(enabled=False, base_hidden_size=64))

# name: (new model changes, old layout, new layout, depth position, depth init, μP, extra checks)
# Extra checks (mid-ramp resume, plain model after the ramp) run on the combined scenarios only.
SCENARIOS = {
    "hidden_tp2": (dict(hidden_size=96), "tp2", "tp2", "top", "copy", True, False),
    "heads_tp2_to_pp2": (dict(num_attention_heads=4, num_query_groups=4), "tp2", "pp2", "top", "copy", False, False),
    "ffn_pp2_to_tp2": (dict(ffn_hidden_size=160), "pp2", "tp2", "top", "copy", False, False),
    "depth_top_copy_pp2": (dict(num_layers=4), "pp2", "pp2", "top", "copy", False, False),
    "depth_interleave_random_dp2_to_tp2": (dict(num_layers=4), "dp2", "tp2", "interleave", "random", False, False),
    "all_interleave_copy_tp2_to_pp2": (dict(hidden_size=128, num_attention_heads=4, num_query_groups=4,
                                            ffn_hidden_size=192, num_layers=4), "tp2", "pp2", "interleave", "copy",
                                       True, True),
    "all_top_random_pp2_to_tp2": (dict(hidden_size=96, num_attention_heads=4, num_query_groups=4,
                                       ffn_hidden_size=128, num_layers=3), "pp2", "tp2", "top", "random",
                                  False, True),
}
LAYOUTS = {"tp2": (2, 1, 1), "pp2": (1, 2, 1), "dp2": (1, 1, 2)}
STEPS_BEFORE, STEPS_AFTER, RAMP_ITERS = 3, 4, 4
SPEC = "local"  # train.gpu.spec of every model built here (main() sets it from argv)
NEW_STAGE_LR = 2e-3


def config(model: dict, layout: str, run_dir: Path, mup: bool, lr: float = 3e-3):
    tp, pp, dp = LAYOUTS[layout]
    model = {**BASE_MODEL, **model}
    if mup:
        model["mup"] = dict(enabled=True, base_hidden_size=32)
        model["output_mult"] = 2.0
    return OmegaConf.create(dict(
        run_dir=str(run_dir), model=model,
        parallel=dict(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, data_parallel_size=dp,
                      virtual_pipeline_model_parallel_size=None, sequence_parallel=tp > 1,
                      use_distributed_optimizer=True),
        train=dict(micro_batch_size=MBS, global_batch_size=GBS, train_iters=100, seed=1234, lr=lr, min_lr=3e-4,
                   lr_warmup_iters=2, lr_decay_iters=100, lr_decay_style="cosine", wsd_decay_fraction=0.2,
                   weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.95, adam_eps=1e-8, clip_grad=1.0, bf16=False,
                   recompute="none", overlap_grad_reduce=False, overlap_param_gather=False,
                   gpu=dict(spec=SPEC)),
        checkpoint=dict(save_interval=0, keep_last=10, async_save=False, optimizer_sharding="fully_reshardable",
                        load="auto")))


def batch(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Learnable sequences: next = 5·prev + 7 (mod vocab), 10% noise."""
    start = torch.randint(3, VOCAB, (MBS, 1), generator=generator)
    ids = [start]
    for _ in range(SEQ):
        nxt = (ids[-1] * 5 + 7) % VOCAB
        noise = torch.rand(MBS, 1, generator=generator) < 0.1
        ids.append(torch.where(noise, torch.randint(0, VOCAB, (MBS, 1), generator=generator), nxt))
    tokens = torch.cat(ids, dim=1)
    return {"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "loss_mask": torch.ones(MBS, SEQ),
            "position_ids": torch.arange(SEQ).expand(MBS, SEQ)}


def microbatches(seed: int, count: int):
    from megatron.core import parallel_state

    generator = torch.Generator().manual_seed(seed)
    all_batches = [batch(generator) for _ in range(count * parallel_state.get_data_parallel_world_size())]
    rank, size = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
    return iter(all_batches[rank::size])


def setup(cfg) -> None:
    from megatron.core import parallel_state, tensor_parallel
    from megatron.core.num_microbatches_calculator import (init_num_microbatches_calculator,
                                                             unset_num_microbatches_calculator)

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=int(cfg.parallel.tensor_model_parallel_size),
        pipeline_model_parallel_size=int(cfg.parallel.pipeline_model_parallel_size))
    tensor_parallel.model_parallel_cuda_manual_seed(1234)
    unset_num_microbatches_calculator()
    init_num_microbatches_calculator(dist.get_rank(), None, GBS, MBS, int(cfg.parallel.data_parallel_size))


def build(cfg, masked: bool):
    """Model chunks (DDP) + optimizer + scheduler through the trainer's own functions."""
    from megatron.core import parallel_state
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from pretrain.train import optim
    from pretrain.growth.masked import build_masked_model
    from pretrain.model.teleflm import build_model

    builder = build_masked_model if masked else build_model
    chunk = builder(cfg, pre_process=parallel_state.is_pipeline_first_stage(),
                    post_process=parallel_state.is_pipeline_last_stage())
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                               use_distributed_optimizer=True, check_for_nan_in_grad=True)
    model = [DistributedDataParallel(config=chunk.config, ddp_config=ddp_config, module=chunk)]
    model[0].broadcast_params()
    optimizer = optim.build_optimizer(cfg, model)
    scheduler = optim.build_scheduler(cfg, optimizer)
    from pretrain.train.megatron_step import wire_schedule_hooks

    wire_schedule_hooks(model, optimizer, cfg)
    return model, optimizer, scheduler


def data_parallel_size(model) -> int:
    config = model[0].config
    return dist.get_world_size() // (config.tensor_model_parallel_size * config.pipeline_model_parallel_size)


def step(model, optimizer, scheduler, seed: int) -> float:
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from pretrain.train.forward import forward_step
    from pretrain.train.megatron_step import reduce_losses

    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    count = GBS // MBS // data_parallel_size(model)
    losses = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=microbatches(seed, count), model=model,
        num_microbatches=count, seq_length=SEQ, micro_batch_size=MBS, forward_only=False)
    updated, _, _ = optimizer.step()
    assert updated
    scheduler.step(increment=1)
    return reduce_losses(losses)


@torch.no_grad()
def fixed_batch_loss(model) -> float:
    """Loss on the same 4 sequences whatever the layout (each DP rank its share)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from pretrain.train.forward import forward_step
    from pretrain.train.megatron_step import reduce_losses

    count = GBS // MBS // data_parallel_size(model)
    for chunk in model:
        chunk.eval()
    losses = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=microbatches(999, count), model=model,
        num_microbatches=count, seq_length=SEQ, micro_batch_size=MBS, forward_only=True)
    for chunk in model:
        chunk.train()
    return reduce_losses(losses)


def train_old(old_layout: str, mup: bool, out_dir: Path) -> dict:
    """Train the old model a few steps and write a trainer checkpoint (shared by scenarios)."""
    from pretrain import checkpoint

    old_cfg = config({}, old_layout, out_dir / f"old_{old_layout}_{'mup' if mup else 'sp'}", mup)
    setup(old_cfg)
    model, optimizer, scheduler = build(old_cfg, masked=False)
    progress = checkpoint.TrainProgress()
    before = []
    for _ in range(STEPS_BEFORE):
        before.append(step(model, optimizer, scheduler, seed=progress.iteration))
        progress.iteration += 1
        progress.consumed_samples += GBS
    loss_before = fixed_batch_loss(model)
    writer = checkpoint.CheckpointWriter(old_cfg, old_cfg, async_save=False)
    source = writer.save(model, optimizer, scheduler, progress)
    writer.close()
    return {"source": source, "progress": progress, "train_before": before, "loss_before": loss_before}


def run_scenario(name: str, out_dir: Path, old_runs: dict) -> dict:
    from pretrain import checkpoint
    from pretrain.growth.grow import grow_checkpoint
    from pretrain.growth.masked import ramp_for, set_ramp

    new_changes, old_layout, new_layout, position, init, mup, extra = SCENARIOS[name]
    root = out_dir / name
    if (old_layout, mup) not in old_runs:
        old_runs[(old_layout, mup)] = train_old(old_layout, mup, out_dir)
    old = old_runs[(old_layout, mup)]
    source, progress = old["source"], checkpoint.TrainProgress(**vars(old["progress"]))
    loss_before, before = old["loss_before"], old["train_before"]

    new_cfg = config(new_changes, new_layout, root / "new", mup, lr=NEW_STAGE_LR)
    target = checkpoint.checkpoints_root(new_cfg.run_dir) / checkpoint.checkpoint_name(progress.iteration)
    new_cfg = grow_checkpoint(source, target, new_cfg, ramp_iters=RAMP_ITERS, depth_position=position,
                              depth_init=init)
    if dist.get_rank() == 0:
        checkpoint.write_latest_marker(new_cfg.run_dir, progress.iteration)
    setup(new_cfg)
    model, optimizer, scheduler = build(new_cfg, masked=True)
    progress = checkpoint.load_checkpoint(target, model, optimizer, scheduler, new_cfg)
    set_ramp(model, ramp_for(new_cfg, progress.iteration))
    loss_after = fixed_batch_loss(model)
    adam_step = float(optimizer.param_groups[0]["step"]) if "step" in optimizer.param_groups[0] else None
    after, mid_ramp = [], None
    writer = checkpoint.CheckpointWriter(new_cfg, new_cfg, async_save=False)
    for k in range(STEPS_AFTER):
        set_ramp(model, ramp_for(new_cfg, progress.iteration))
        after.append(step(model, optimizer, scheduler, seed=progress.iteration))
        progress.iteration += 1
        progress.consumed_samples += GBS
        if k == 0 and extra:  # mid-ramp (m = 1/RAMP_ITERS next): save and check a fresh process-state reload
            set_ramp(model, ramp_for(new_cfg, progress.iteration))
            mid_ramp = {"ramp": ramp_for(new_cfg, progress.iteration), "live": fixed_batch_loss(model),
                        "path": str(writer.save(model, optimizer, scheduler, progress))}
    final_path = writer.save(model, optimizer, scheduler, progress) if extra else None
    set_ramp(model, ramp_for(new_cfg, progress.iteration))
    loss_final_masked = fixed_batch_loss(model)
    writer.close()
    del model, optimizer, scheduler
    result = {"loss_before": loss_before, "loss_after": loss_after, "train_before": before, "train_after": after,
              "ramp_at_growth": ramp_for(new_cfg, int(new_cfg.growth.start_iteration)),
              "ramp_at_end": ramp_for(new_cfg, progress.iteration),
              "start_iteration": int(new_cfg.growth.start_iteration), "adam_step_after_load": adam_step,
              "final_masked": loss_final_masked}
    if not extra:
        return result

    # Resume in the middle of the ramp: the mask is a function of the saved iteration.
    model, optimizer, scheduler = build(new_cfg, masked=True)
    resumed = checkpoint.load_checkpoint(Path(mid_ramp["path"]), model, optimizer, scheduler, new_cfg)
    set_ramp(model, ramp_for(new_cfg, resumed.iteration))
    mid_ramp["resumed"] = fixed_batch_loss(model)
    del model, optimizer, scheduler

    # After the ramp: the same checkpoint in the plain (unmasked) model.
    plain_cfg = OmegaConf.create(OmegaConf.to_container(new_cfg, resolve=True))
    del plain_cfg["growth"]
    model, optimizer, scheduler = build(plain_cfg, masked=False)
    checkpoint.load_checkpoint(final_path, model, optimizer, scheduler, plain_cfg)
    result.update(mid_ramp=mid_ramp, final_plain=fixed_batch_loss(model))
    del model, optimizer, scheduler
    return result


def main() -> None:
    from pretrain.cpu_shims import activate_cpu_shims
    from pretrain.train.setup import init_distributed  # noqa: F401  (trainer importable)

    activate_cpu_shims()
    global SPEC
    out_dir, names = Path(sys.argv[1]), sys.argv[2].split(",")
    SPEC = sys.argv[3] if len(sys.argv) > 3 else SPEC
    dist.init_process_group("gloo")
    results, old_runs = {}, {}
    for name in names:
        results[name] = run_scenario(name, out_dir, old_runs)
        if dist.get_rank() == 0:
            print(name, json.dumps(results[name]), flush=True)
    if dist.get_rank() == 0:
        (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
