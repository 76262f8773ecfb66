"""Several real training runs inside ONE torchrun launch (process start-up dominates on CPU).

    torchrun --nproc_per_node=N tests/pretrain/train/trainer_worker.py GROUP DATA_DIR WORK_DIR

Each scenario calls ``pretrain.train.run`` exactly as ``python -m pretrain``
would (config composed by Hydra from configs/), then tears down megatron's
model-parallel state so the next scenario can pick another layout on the same
process group. Rank 0 writes WORK_DIR/results.json: per scenario, the loss of
every step and the held-out losses.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

# A model small enough for a 2-core CI box, with every Tele-FLM feature on.
SMALL_MODEL = [
    "model.seq_length=64", "model.hidden_size=64", "model.num_attention_heads=4",
    "model.num_query_groups=4", "model.kv_channels=16", "model.ffn_hidden_size=128",
    "model.make_vocab_size_divisible_by=64", "model.input_mult=1.5", "model.output_mult=0.5",
]
SHORT_RUN = [
    "train.micro_batch_size=2", "train.global_batch_size=8", "train.train_iters=20",
    "train.lr_warmup_iters=3", "train.lr_decay_iters=20", "train.lr=3e-3", "train.min_lr=3e-4",
    "train.eval_interval=10", "train.eval_iters=1", "train.log_interval=0",
    "checkpoint.save_interval=10", "checkpoint.async_save=false",
    "logging.wandb.mode=disabled", "logging.progress=false",
    # the end-of-run held-out scoring on 2 documents per set (all 40 took 5-12 s per scenario;
    # no test here reads it, and BPB over whole sets is checked end to end in tests/e2e)
    "train.heldout_max_documents=2",
]

GROUPS: dict[str, list[tuple[str, list[list[str]]]]] = {
    # name -> one or more successive runs (a resume is a second run in the same run_dir)
    "two": [
        ("tp2_sp", [["parallel=tp2"]]),
        ("pp2", [["parallel=pp2"]]),
        ("dp2_distopt", [["parallel=dp2"]]),
        ("pp2_vpp2", [["parallel=pp2", "parallel.virtual_pipeline_model_parallel_size=2"]]),
        ("tp2_resumed", [["parallel=tp2", "train.train_iters=10", "checkpoint.async_save=true"],
                         ["parallel=tp2", "checkpoint.async_save=true", "logging.wandb.mode=offline"]]),
        # bf16 params/activations (bf16 pipeline p2p), fp32 master weights and grad accumulation:
        # the first 10 steps of pp2's schedule (lr_decay_iters=20). PP2, not TP2+SP: measured
        # 5.6 s vs 9.1 s for these 10 steps on 2 cores (CPU bf16 matmuls are slow).
        ("pp2_bf16", [["parallel=pp2", "train.bf16=true", "train.train_iters=10"]]),
        # tp2_sp's step-10 checkpoint (dp_reshardable, the default) converted offline by
        # pretrain.tools.reshard_checkpoint to fully_reshardable, resumed with TP and PP both
        # changed (TP2 -> 1, PP1 -> 2)
        ("pp2_from_tp2_sp", [["parallel=pp2", "checkpoint.load=${oc.env:RESHARD_FROM}"]]),
    ],
    "eight": [
        # TP2 x PP2 x DP2, sequence parallel, distributed optimizer: the same run as "two"'s tp2_sp.
        # Checkpoints at 10 and 20 with the defaults (dp_reshardable, fully parallel save/load).
        ("tp2pp2dp2", [["parallel=tp2pp2dp2"]]),
        # its step-10 checkpoint resumed in another run dir: steps 11-20 must equal the straight run's
        ("tp2pp2dp2_resumed", [["parallel=tp2pp2dp2", "checkpoint.load=${oc.env:RESUME_FROM}"]]),
    ],
}


# scenario -> the earlier scenario of its group whose step-10 checkpoint it loads
RESHARD_SOURCES = {"pp2_from_tp2_sp": "tp2_sp"}       # converted to fully_reshardable first
RESUME_SOURCES = {"tp2pp2dp2_resumed": "tp2pp2dp2"}   # loaded as saved
CONVERTED = "{}_fully_reshardable"                    # WORK_DIR/<source>_fully_reshardable: the converted run dir


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir

    import pretrain.config.schema  # noqa: F401  registers pretrain_schema

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        return hydra_compose("pretrain", overrides=overrides)


def read_run(run_dir: Path) -> dict:
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return {"losses": {r["step"]: r["loss"] for r in rows if r.get("event") is None},
            "grad_norms": {r["step"]: r["grad_norm"] for r in rows if r.get("event") is None},
            "eval": {r["step"]: r["eval_loss"] for r in rows if r.get("event") == "eval"},
            "events": [r["event"] for r in rows if r.get("event")],
            # what the trainer built (pretrain.train.optim.describe_optimizer), from the start row
            "layout": next(({k: r[k] for k in ("precision", "optimizer_shards", "fast_path") if k in r}
                            for r in rows if r.get("event") == "start"), {})}


def read_accounting(run_dir: Path) -> dict:
    """What pretrain/checkpoint_accounting.py recorded: per checkpoint the save's summary and
    per-rank bytes, per load the same; and the ``checkpoint`` metrics rows' figures."""
    saves = {p.parent.name: json.loads(p.read_text()) for p in (run_dir / "checkpoints").glob("iter_*/checkpoint_accounting.json")}
    loads = {p.stem: json.loads(p.read_text()) for p in (run_dir / "checkpoint_accounting").glob("load_*.json")}
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return {"saves": saves, "loads": loads,
            "checkpoint_rows": [r for r in rows if r.get("event") in ("checkpoint", "checkpoint_load")]}


def main() -> None:
    import os

    import torch.distributed as dist
    from megatron.core import parallel_state
    from omegaconf import OmegaConf

    from pretrain.train.run import run
    from pretrain.train.setup import shutdown

    group, data_dir, work_dir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    results = {}
    for name, runs in GROUPS[group]:
        run_dir = work_dir / name
        started = time.time()
        if name in RESHARD_SOURCES:
            from pretrain.tools.reshard_checkpoint import reshard

            source = work_dir / RESHARD_SOURCES[name] / "checkpoints" / "iter_0000010"
            os.environ["RESHARD_FROM"] = str(reshard(source, work_dir / CONVERTED.format(RESHARD_SOURCES[name])))
        if name in RESUME_SOURCES:
            os.environ["RESUME_FROM"] = str(work_dir / RESUME_SOURCES[name] / "checkpoints" / "iter_0000010")
        for overrides in runs:
            cfg = compose([f"data.path={data_dir}", f"run_dir={run_dir}", *SMALL_MODEL, *SHORT_RUN, *overrides])
            run(cfg)
            parallel_state.destroy_model_parallel()
        if dist.get_rank() == 0:
            results[name] = read_run(run_dir)
            results[name]["checkpoints"] = sorted(p.name for p in (run_dir / "checkpoints").glob("iter_*"))
            results[name]["latest"] = (run_dir / "checkpoints" / "latest").read_text().strip()
            results[name]["wandb_offline_runs"] = len(list((run_dir / "wandb").glob("offline-run-*"))) \
                if (run_dir / "wandb").is_dir() else 0
            resolved = OmegaConf.load(run_dir / "config.yaml")
            results[name]["parallel"] = OmegaConf.to_container(resolved.parallel)
            results[name]["accounting"] = read_accounting(run_dir)
            results[name]["wall_s"] = round(time.time() - started, 1)
            print(f"scenario {name}: {len(results[name]['losses'])} steps in {results[name]['wall_s']} s", flush=True)
    if dist.get_rank() == 0:
        (work_dir / "results.json").write_text(json.dumps(results))
    shutdown()


if __name__ == "__main__":
    main()
