"""2 processes at TP2: μP init and megatron optimizer LRs follow global names/shapes.

Builds the tiny Tele-FLM at twice its μP base width, sharded over TP2, wraps it
in megatron DDP, builds megatron's optimizer with ``pretrain.model.mup``'s
per-group overrides and steps the LR scheduler once.  Rank 0 prints one JSON
line: per parameter its local shape, the std of the gathered full tensor and
the LR its optimizer group got.
"""

from __future__ import annotations

import json

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from pretrain.cpu_shims import activate_cpu_shims


def config():
    model = OmegaConf.merge(OmegaConf.load("configs/model/52b.yaml"), OmegaConf.load("configs/model/tiny.yaml"))
    model.pop("defaults", None)
    model.update(hidden_size=256, num_attention_heads=8, num_query_groups=8, kv_channels=32, ffn_hidden_size=688,
                 num_layers=2, vocab_size=512, seq_length=32, truncated_normal_init=False,
                 init_method_std=0.02, embedding_init_std=0.01)
    model.mup = {"enabled": True, "base_hidden_size": 128, "base_ffn_hidden_size": 172,
                 "base_num_attention_heads": 4}
    return OmegaConf.create({
        "model": model,
        "parallel": {"tensor_model_parallel_size": 2, "pipeline_model_parallel_size": 1,
                     "virtual_pipeline_model_parallel_size": None, "sequence_parallel": False},
        "train": {"seed": 3, "lr": 1e-3, "lr_matrix": 8e-3, "min_lr": 1e-4}})


def main() -> None:
    activate_cpu_shims()
    dist.init_process_group("gloo")
    from megatron.core import parallel_state, tensor_parallel
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    from pretrain.model import mup
    from pretrain.model.teleflm import build_model

    parallel_state.initialize_model_parallel(tensor_model_parallel_size=2)
    tensor_parallel.model_parallel_cuda_manual_seed(3)
    cfg = config()
    model = build_model(cfg)
    full_std = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            tensor = param.detach().float()
            if getattr(param, "tensor_model_parallel", False):
                parts = [torch.empty_like(tensor) for _ in range(2)]
                dist.all_gather(parts, tensor.contiguous(), group=parallel_state.get_tensor_model_parallel_group())
                tensor = torch.cat(parts, dim=param.partition_dim)
            full_std[name] = float(tensor.std())
    ddp = DistributedDataParallel(config=model.config, module=model,
                                  ddp_config=DistributedDataParallelConfig(grad_reduce_in_fp32=True))
    opt_config = OptimizerConfig(optimizer="adam", lr=1e-3, min_lr=1e-4, weight_decay=0.0, clip_grad=1.0)
    optimizer = get_megatron_optimizer(opt_config, [ddp], **mup.megatron_optimizer_kwargs(cfg, opt_config, [ddp]))
    scheduler = OptimizerParamScheduler(optimizer, init_lr=0.0, max_lr=1e-3, min_lr=1e-4, lr_warmup_steps=0,
                                        lr_decay_steps=10, lr_decay_style="cosine", start_wd=0.0, end_wd=0.0,
                                        wd_incr_steps=10, wd_incr_style="constant")
    scheduler.step(10)  # end of decay: every group sits at its own min_lr
    at_floor = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            at_floor[id(p)] = (group["lr"], group["max_lr"])
    result = {}
    for name, param in ddp.named_parameters():
        floor, peak = at_floor[id(param)]
        result[mup.canonical_name(name)] = {"local_shape": list(param.shape), "max_lr": peak, "lr_at_end": floor}
    for name, std in full_std.items():
        result[name]["full_std"] = std
    if dist.get_rank() == 0:
        print("RESULT " + json.dumps(result), flush=True)
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
