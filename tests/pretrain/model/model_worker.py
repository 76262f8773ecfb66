"""2 processes: the Tele-FLM model at TP2 (+SP) and at TP1 computes the same loss.

Prints one JSON line per check for tests/pretrain/model/test_teleflm.py to assert on.
"""

from __future__ import annotations

import json

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from pretrain.cpu_shims import activate_cpu_shims


def tiny_cfg(tp: int, sp: bool):
    model = OmegaConf.merge(OmegaConf.load("configs/model/52b.yaml"),
                            OmegaConf.load("configs/model/tiny.yaml"))
    model.pop("defaults", None)
    model.input_mult = 2.0        # exercise both multipliers
    model.output_mult = 0.5
    model.make_vocab_size_divisible_by = 256  # same padded vocab at TP1 and TP2
    parallel = dict(tensor_model_parallel_size=tp, pipeline_model_parallel_size=1,
                    virtual_pipeline_model_parallel_size=None, sequence_parallel=sp)
    return OmegaConf.create({"model": model, "parallel": parallel, "train": {"seed": 7}})


def loss_at(tp: int, sp: bool) -> tuple[float, list[str], list[float]]:
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed
    from pretrain.model.teleflm import build_model

    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp)
    model_parallel_cuda_manual_seed(7)
    model = build_model(tiny_cfg(tp, sp))
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 8000, (2, 129), generator=generator)
    position_ids = torch.arange(128).expand(2, 128)
    loss = model(tokens[:, :-1], position_ids, None, labels=tokens[:, 1:]).mean()
    loss.backward()
    grad_norm_sq = torch.zeros(1)
    for p in model.parameters():
        if getattr(p, "tensor_model_parallel", False) or parallel_state.get_tensor_model_parallel_rank() == 0:
            grad_norm_sq += p.grad.float().pow(2).sum() if p.grad is not None else p.main_grad.float().pow(2).sum()
    names = [n for n, _ in model.named_parameters()]
    parallel_state.destroy_model_parallel()
    return loss.item(), names, [grad_norm_sq.item()]


def main() -> None:
    activate_cpu_shims()
    dist.init_process_group("gloo")
    results = {}
    for tp, sp in ((2, True), (2, False), (1, False)):
        loss, names, _ = loss_at(tp, sp)
        results[f"tp{tp}{'_sp' if sp else ''}"] = loss
        if tp == 1:
            results["names_tp1"] = names
    if dist.get_rank() == 0:
        print("RESULT " + json.dumps(results), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
