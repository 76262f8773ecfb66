"""Grow small -> large vs train large from scratch with the same compute; loss vs FLOPs.

    python bench/growth/run_bench.py --data <tokenizer output>/indexed [--out runs/growth_bench]

Both arms run through the CLIs (``python -m pretrain.growth schedule=bench_tiny``
and ``python -m pretrain``) on the same data stream.  FLOPs per step come from
:func:`pretrain.flops.model_flops_per_token` of the model that ran the step (a
grown stage under masks computes at its full new width).  The scratch arm gets
exactly the growth arm's total FLOPs.  Writes ``results.json`` and
``loss_vs_flops.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    steps, evals = [], []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss" in row and "step" in row and "event" not in row:
            steps.append(row)
        elif "eval_loss" in row or row.get("event") == "eval":
            evals.append(row)
    return steps, evals


def flops_per_step(run_config: Path) -> float:
    from pretrain.flops import model_flops_per_token

    cfg = OmegaConf.load(run_config)
    tokens = int(cfg.train.global_batch_size) * int(cfg.model.seq_length)
    return tokens * model_flops_per_token(OmegaConf.to_container(cfg.model, resolve=True),
                                          int(cfg.model.seq_length), padded_vocab=int(cfg.model.padded_vocab_size))


def smooth(values: list[float], window: int = 15) -> list[float]:
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1):i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def curve(stage_dirs: list[Path]) -> dict:
    """Cumulative FLOPs, training loss (by step) and eval loss points over consecutive runs."""
    flops, losses, eval_points, total = [], [], [], 0.0
    for stage_dir in stage_dirs:
        per_step = flops_per_step(sorted((stage_dir / "checkpoints").glob("iter_*"))[-1] / "run_config.yaml")
        steps, evals = read_metrics(stage_dir)
        start = total
        first = steps[0]["step"] - 1
        for row in steps:
            total = start + (row["step"] - first) * per_step
            flops.append(total)
            losses.append(row["loss"])
        for row in evals:
            eval_points.append((start + (row["step"] - first) * per_step, row.get("eval_loss", row.get("loss"))))
    return {"flops": flops, "loss": losses, "smoothed": smooth(losses), "eval": eval_points}


def flops_to_reach(c: dict, target: float) -> float | None:
    for f, loss in zip(c["flops"], c["smoothed"]):
        if loss <= target:
            return f
    return None


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="tokenizer output 'indexed' dir (manifest.json)")
    parser.add_argument("--out", default="runs/growth_bench")
    args = parser.parse_args()
    out = (REPO / args.out).resolve()
    started = time.time()
    run([sys.executable, "-m", "pretrain.growth", "schedule=bench_tiny", f"run_dir={out / 'growth'}",
         f"data.path={args.data}"])
    growth_dirs = sorted((out / "growth").glob("stage*_*"))
    grown = curve(growth_dirs)
    large = OmegaConf.load(growth_dirs[-1] / "stage.yaml")
    per_step_large = flops_per_step(growth_dirs[-1] / "stage.yaml")
    scratch_iters = int(round(grown["flops"][-1] / per_step_large))
    m = large.model
    run([sys.executable, "-m", "pretrain", "model=tiny", "parallel=single", f"run_dir={out / 'scratch'}",
         f"data.path={args.data}", f"model.num_layers={m.num_layers}", f"model.hidden_size={m.hidden_size}",
         f"model.num_attention_heads={m.num_attention_heads}", f"model.num_query_groups={m.num_query_groups}",
         f"model.kv_channels={m.kv_channels}", f"model.ffn_hidden_size={m.ffn_hidden_size}",
         f"train.train_iters={scratch_iters}", "train.lr=3.0e-3", "train.min_lr=3.0e-4",
         "train.lr_warmup_iters=15", f"train.lr_decay_iters={scratch_iters}",
         f"train.global_batch_size={large.train.global_batch_size}",
         f"train.micro_batch_size={large.train.micro_batch_size}", "train.eval_interval=25", "train.eval_iters=2",
         "train.log_interval=25", "checkpoint.save_interval=0", "checkpoint.async_save=false",
         "logging.wandb.mode=disabled"])
    scratch = curve([out / "scratch"])

    target = grown["smoothed"][-1]
    grown_reach, scratch_reach = flops_to_reach(grown, target), flops_to_reach(scratch, target)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": "2-core CPU (shared)",
        "wall_time_s": round(time.time() - started, 1),
        "growth_total_flops": grown["flops"][-1], "scratch_total_flops": scratch["flops"][-1],
        "target_loss_smoothed": target, "growth_flops_to_target": grown_reach,
        "scratch_flops_to_target": scratch_reach,
        "compute_saved": None if scratch_reach is None else 1 - grown_reach / scratch_reach,
        "final_smoothed": {"growth": grown["smoothed"][-1], "scratch": scratch["smoothed"][-1]},
        "final_eval": {"growth": grown["eval"][-1][1] if grown["eval"] else None,
                       "scratch": scratch["eval"][-1][1] if scratch["eval"] else None},
        "scratch_iters": scratch_iters,
    }
    (out / "results.json").write_text(json.dumps({**result, "curves": {"growth": grown, "scratch": scratch}}))
    print(json.dumps(result, indent=1))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, c, color in (("grow small→large (MSG)", grown, "tab:blue"), ("large from scratch", scratch, "tab:orange")):
        ax.plot(c["flops"], c["loss"], color=color, alpha=0.25, lw=0.8)
        ax.plot(c["flops"], c["smoothed"], color=color, label=f"{name} (train, smoothed)")
        if c["eval"]:
            ax.plot(*zip(*c["eval"]), "o--", color=color, ms=4, lw=0.8, label=f"{name} (held-out)")
    boundary = grown["flops"][len(read_metrics(growth_dirs[0])[0]) - 1]
    ax.axvline(boundary, color="gray", ls=":", lw=1, label="growth")
    ax.axhline(target, color="black", lw=0.6, ls="--")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("loss")
    saved = result["compute_saved"]
    ax.set_title("tiny Tele-FLM, demo corpus, 2-core CPU"
                 + (f": {saved:.0%} compute saved to reach loss {target:.3f}" if saved is not None else ""))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "loss_vs_flops.png", dpi=120)


if __name__ == "__main__":
    main()
