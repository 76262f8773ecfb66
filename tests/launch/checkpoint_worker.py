"""Under torchrun: build the tiny Tele-FLM model at TP=world size, save a real dist checkpoint
in the trainer's layout (iter dir + run_config.yaml + latest), and the model's own logits.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/launch/checkpoint_worker.py RUN_DIR

The model exercises everything the exporter must fold or split: input_mult 2,
output_mult 0.5 with muP width_mult 2, grouped-query attention (4 heads, 2
groups) and a padded vocabulary (1000 real ids, 1024 rows at TP2).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

TOKENS_SEED, BATCH, SEQ, REAL_VOCAB = 0, 2, 24, 1000


def tiny_run_config(tp: int):
    model = OmegaConf.merge(OmegaConf.load(REPO_ROOT / "configs/model/52b.yaml"),
                            OmegaConf.load(REPO_ROOT / "configs/model/tiny.yaml"))
    model.pop("defaults", None)
    model.update(num_layers=2, num_query_groups=2, vocab_size=REAL_VOCAB, seq_length=64,
                 input_mult=2.0, output_mult=0.5, init_method_std=0.05, embedding_init_std=0.5)
    model.mup.update(enabled=True, base_hidden_size=64)
    parallel = dict(tensor_model_parallel_size=tp, pipeline_model_parallel_size=1,
                    virtual_pipeline_model_parallel_size=None, data_parallel_size=1,
                    sequence_parallel=False, use_distributed_optimizer=False)
    return OmegaConf.create({"model": model, "parallel": parallel,
                             "train": {"seed": 11, "bf16": False, "recompute": "none"}})


def reference_tokens() -> torch.Tensor:
    return torch.randint(0, REAL_VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(TOKENS_SEED))


def main(run_dir: Path) -> None:
    from megatron.core import parallel_state, tensor_parallel
    from pretrain.cpu_shims import activate_cpu_shims
    from pretrain.model.teleflm import build_model

    activate_cpu_shims()
    dist.init_process_group("gloo")
    tp = dist.get_world_size()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp)
    tensor_parallel.model_parallel_cuda_manual_seed(11)
    cfg = tiny_run_config(tp)
    model = build_model(cfg).eval()
    tokens = reference_tokens()
    with torch.no_grad():
        # Perturb the norm gains away from 1 so a mis-mapped norm cannot go unnoticed.
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.linspace(-0.3, 0.3, p.numel()).view_as(p))
        logits = model(tokens, torch.arange(SEQ).expand(BATCH, SEQ), None)   # [b, s, V/tp]
        shards = [torch.empty_like(logits) for _ in range(tp)]
        dist.all_gather(shards, logits.contiguous())
    iter_dir = run_dir / "checkpoints" / "iter_0000001"
    iter_dir.mkdir(parents=True, exist_ok=True)
    from pretrain.checkpoint import save_synchronously

    save_synchronously({"model": model.sharded_state_dict(), "iteration": 1}, iter_dir)
    dist.barrier()
    if dist.get_rank() == 0:
        OmegaConf.save(cfg, iter_dir / "run_config.yaml")
        (run_dir / "checkpoints" / "latest").write_text("iter_0000001")
        torch.save({"tokens": tokens, "logits": torch.cat(shards, dim=-1)}, run_dir / "reference_logits.pt")
    dist.barrier()
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
