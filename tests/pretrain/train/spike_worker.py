"""Fault-injected training runs inside ONE torchrun launch (process start-up dominates on CPU).

    torchrun --nproc_per_node=2 tests/pretrain/train/spike_worker.py DATA_DIR WORK_DIR

Scenarios run in order (the replay reads the lr_spike run's spikes.jsonl). Rank 0
writes WORK_DIR/results.json: per scenario the loss of every step, the event rows
of metrics.jsonl, the spikes.jsonl rows, and the stop message if the run stopped.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from tests.pretrain.train.trainer_worker import SMALL_MODEL, compose  # noqa: E402

STEPS = 30
RUN = [
    "parallel=dp2", "train.micro_batch_size=2", "train.global_batch_size=8", f"train.train_iters={STEPS}",
    "train.lr_warmup_iters=3", f"train.lr_decay_iters={STEPS}", "train.lr=3e-3", "train.min_lr=3e-4",
    "train.eval_interval=0", "train.log_interval=0",
    "checkpoint.save_interval=4", "checkpoint.async_save=false", "checkpoint.keep_last=10",
    "logging.wandb.mode=disabled", "logging.progress=false", "train.heldout_max_documents=2",
    # detection tuned for a 30-step run (defaults assume thousands of steps)
    "train.spikes.window=8", "train.spikes.min_history=5", "train.spikes.loss_sigma=3",
    "train.spikes.grad_norm_sigma=6", "train.spikes.rollback_steps_before=3", "train.spikes.skip_batches=2",
    "train.spikes.lr_steps=4", "train.spikes.max_recoveries=4", "train.spikes.recovery_window=100",
]

SCENARIOS: list[tuple[str, list[str]]] = [
    ("clean", []),
    ("nan", ["train.fault.kind=nan", "train.fault.step=12"]),
    ("corrupt_batch", ["train.fault.kind=corrupt_batch", "train.fault.step=24"]),
    ("lr_spike", ["train.fault.kind=lr_spike", "train.fault.step=15"]),
    ("replay", ["train.spikes.replay_skips=${oc.env:REPLAY_FROM}"]),
    ("zloss", ["train.z_loss=1e-4"]),
    ("stop", ["train.fault.kind=nan", "train.fault.step=12", "train.spikes.max_recoveries=0"]),
]


def read_rows(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.is_file() else []


class CollectiveCounter:
    """Counts, per step of the clean run, the global grad-norm computations and the
    all-reduces issued from each module (instrumentation of the real calls, not a mock)."""

    def __init__(self) -> None:
        import megatron.core.optimizer.optimizer as megatron_optimizer
        import torch.distributed as dist

        self.grad_norms = 0
        self.all_reduce_by_module: dict[str, int] = {}
        self._restore = [(megatron_optimizer, "get_grad_norm_fp32", megatron_optimizer.get_grad_norm_fp32),
                         (dist, "all_reduce", dist.all_reduce)]
        norm, all_reduce = megatron_optimizer.get_grad_norm_fp32, dist.all_reduce

        def counted_norm(*args, **kwargs):
            self.grad_norms += 1
            return norm(*args, **kwargs)

        def counted_all_reduce(*args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "?")
            self.all_reduce_by_module[caller] = self.all_reduce_by_module.get(caller, 0) + 1
            return all_reduce(*args, **kwargs)

        megatron_optimizer.get_grad_norm_fp32 = counted_norm
        dist.all_reduce = counted_all_reduce

    def close(self) -> dict:
        for module, name, original in self._restore:
            setattr(module, name, original)
        return {"grad_norms": self.grad_norms, "all_reduce_by_module": self.all_reduce_by_module}


def main() -> None:
    import os

    import torch.distributed as dist
    from megatron.core import parallel_state

    from pretrain.train.spike_policy import SpikeStop
    from pretrain.train.run import run
    from pretrain.train.setup import shutdown

    data_dir, work_dir = sys.argv[1], Path(sys.argv[2])
    only = set(sys.argv[3].split(",")) if len(sys.argv) > 3 else None
    results = {}
    os.environ["REPLAY_FROM"] = str(work_dir / "lr_spike" / "spikes.jsonl")
    for name, overrides in SCENARIOS:
        if only and name not in only:
            continue
        run_dir = work_dir / name
        started = time.time()
        stopped = None
        cfg = compose([f"data.path={data_dir}", f"run_dir={run_dir}", *SMALL_MODEL, *RUN, *overrides])
        counter = CollectiveCounter() if name == "clean" else None
        try:
            run(cfg)
        except SpikeStop as err:
            stopped = str(err)
        counted = counter.close() if counter else None
        parallel_state.destroy_model_parallel()
        dist.barrier()
        if dist.get_rank() == 0:
            rows = read_rows(run_dir / "metrics.jsonl")
            results[name] = {
                "losses": {r["step"]: r["loss"] for r in rows if r.get("event") is None},
                "events": [r for r in rows if r.get("event") not in (None, "checkpoint", "start", "eval")],
                "spikes": read_rows(run_dir / "spikes.jsonl"), "stopped": stopped, "counted": counted,
                "wall_s": round(time.time() - started, 1)}
            print(f"scenario {name}: {results[name]['wall_s']} s, stopped={stopped is not None}", flush=True)
    results["zloss_tp2"] = check_log_z_tp2()
    if dist.get_rank() == 0:
        (work_dir / "results.json").write_text(json.dumps(results))
    shutdown()


def check_log_z_tp2() -> dict:
    """log Z and its gradient from TP2 vocab shards vs the TP1 logsumexp of the full logits."""
    import torch
    from megatron.core import parallel_state

    from pretrain.train.callbacks.z_loss import log_z

    parallel_state.initialize_model_parallel(tensor_model_parallel_size=2)
    rank = parallel_state.get_tensor_model_parallel_rank()
    full = torch.randn(5, 3, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 4
    ref = full.clone().requires_grad_(True)
    (torch.logsumexp(ref, dim=-1).transpose(0, 1) ** 2).sum().backward()
    shard = full[..., rank * 32:(rank + 1) * 32].clone().requires_grad_(True)
    z = log_z(shard, parallel_state.get_tensor_model_parallel_group())
    (z ** 2).sum().backward()
    out = {"value_err": float((z - torch.logsumexp(full, -1).transpose(0, 1)).abs().max()),
           "grad_err": float((shard.grad - ref.grad[..., rank * 32:(rank + 1) * 32]).abs().max())}
    parallel_state.destroy_model_parallel()
    return out


if __name__ == "__main__":
    main()
