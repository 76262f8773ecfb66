"""Clean vs disturbed-without-recovery vs disturbed-with-recovery, one plot.

    python bench/spikes/plot_recovery.py --data <tokenizer output>/indexed [--out runs/spikes_bench]
        [--fault lr_spike] [--step 60] [--iters 120]

Three single-process ``python -m pretrain`` runs of the small test model on the same
data: (1) clean (detection off: on this data
the grad-norm check flags early-training steps, see docs/spikes.md), (2) the fault with ``train.spikes.enabled=false`` (no recovery), (3) the
fault with recovery on. Writes ``results.json`` (final losses, events) and
``recovery.png`` to ``--out`` (copy the PNG to docs/img/ to publish it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SMALL = ["model.seq_length=64", "model.hidden_size=64", "model.num_attention_heads=4",
         "model.num_query_groups=4", "model.kv_channels=16", "model.ffn_hidden_size=128",
         "model.make_vocab_size_divisible_by=64"]


def run(name: str, out: Path, data: str, iters: int, extra: list[str]) -> list[dict]:
    run_dir = out / name
    if not (run_dir / "metrics.jsonl").is_file():
        cmd = [sys.executable, "-m", "pretrain", f"data.path={data}", f"run_dir={run_dir}", *SMALL,
               "train.micro_batch_size=4", "train.global_batch_size=8", f"train.train_iters={iters}",
               "train.lr_warmup_iters=10", "train.eval_interval=0", "train.heldout_max_documents=2",
               "checkpoint.save_interval=10", "checkpoint.async_save=false", "checkpoint.keep_last=5",
               "logging.wandb.mode=disabled", "logging.progress=false",
               "train.spikes.window=16", "train.spikes.min_history=8", "train.spikes.loss_sigma=4",
               "train.spikes.rollback_steps_before=5", "train.spikes.skip_batches=5", *extra]
        env = {**os.environ, "OMP_NUM_THREADS": "2", "WANDB_MODE": "disabled"}
        subprocess.run(cmd, cwd=REPO, env=env, check=True)
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", default="runs/spikes_bench")
    ap.add_argument("--fault", default="lr_spike")
    ap.add_argument("--step", type=int, default=60)
    ap.add_argument("--iters", type=int, default=120)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fault = [f"train.fault.kind={args.fault}", f"train.fault.step={args.step}"]
    arms = {"clean": ["train.spikes.enabled=false"], "disturbed, no recovery": [*fault, "train.spikes.enabled=false"],
            "disturbed, with recovery": fault}
    results = {}
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, extra in arms.items():
        rows = run(name.replace(", ", "_").replace(" ", "_"), out, args.data, args.iters, extra)
        losses = {}
        for r in rows:
            if r.get("event") is None and "loss" in r:
                losses[r["step"]] = r["loss"]          # after a rollback the later row wins
        steps = sorted(losses)
        ax.plot(steps, [min(losses[s], 12.0) if math.isfinite(losses[s]) else 12.0 for s in steps], label=name)
        results[name] = {"final_loss": losses[steps[-1]], "steps": len(steps),
                         "events": [r for r in rows if str(r.get("event", "")).startswith(("spike_", "fault"))]}
    ax.axvline(args.step, color="grey", ls=":", lw=1)
    ax.set_xlabel("step"), ax.set_ylabel("train loss (clipped at 12)")
    ax.set_title(f"fault {args.fault} at step {args.step}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "recovery.png", dpi=120)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    for name, r in results.items():
        print(f"{name:28s} final loss {r['final_loss']:.4f}")


if __name__ == "__main__":
    main()
