"""Grow small -> large vs train large from scratch with the same compute; loss vs FLOPs.

    python bench/growth/run_bench.py --data <tokenizer output>/indexed [--schedule bench_tiny|bench_proxy]
                                     [--out runs/growth_bench]

Both arms run through the CLIs (``python -m pretrain.growth schedule=<schedule>``
and ``python -m pretrain``) on the same data stream.  FLOPs per step come from
:func:`pretrain.tools.flops.model_flops_per_token` of the model that ran the step (a
grown stage under masks computes at its full new width).  The scratch arm gets
exactly the growth arm's total FLOPs, at the first stage's peak/min LR and warm-up and with the
schedule's own trainer overrides (eval cadence).  Writes ``results.json`` and
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
    from pretrain.tools.flops import model_flops_per_token

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


def eval_flops_to_reach(points: list[tuple[float, float]], target: float) -> float | None:
    """FLOPs at which the held-out loss first reaches ``target`` (linear between eval points)."""
    for (f0, l0), (f1, l1) in zip(points, points[1:]):
        if l1 <= target:
            return f1 if l0 <= target or l0 == l1 else f0 + (f1 - f0) * (l0 - target) / (l0 - l1)
    return None


def compute_saved(grown: dict, scratch: dict) -> dict:
    """Same loss, less compute: the loss the scratch arm ends at, and what growth spent to reach it.

    saved = 1 − FLOPs(growth reaches scratch's final loss) / FLOPs(scratch run).
    Measured on the smoothed training loss and on the held-out loss.
    """
    out = {}
    target = scratch["smoothed"][-1]
    reach = flops_to_reach(grown, target)
    out["train_smoothed"] = {"scratch_final_loss": target, "growth_flops_to_reach": reach,
                             "scratch_flops": scratch["flops"][-1],
                             "saved": None if reach is None else 1 - reach / scratch["flops"][-1]}
    if grown["eval"] and scratch["eval"]:
        target = scratch["eval"][-1][1]
        reach = eval_flops_to_reach(grown["eval"], target)
        out["heldout"] = {"scratch_final_loss": target, "growth_flops_to_reach": reach,
                          "scratch_flops": scratch["eval"][-1][0],
                          "saved": None if reach is None else 1 - reach / scratch["eval"][-1][0]}
    return out


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="tokenizer output 'indexed' dir (manifest.json)")
    parser.add_argument("--schedule", default="bench_tiny", help="configs/growth/schedule/<name>.yaml")
    parser.add_argument("--out", default="runs/growth_bench")
    parser.add_argument("--analyse-only", action="store_true", help="re-read finished runs in --out")
    args = parser.parse_args()
    out = (REPO / args.out).resolve()
    started = time.time()
    if not args.analyse_only:
        run([sys.executable, "-m", "pretrain.growth", f"schedule={args.schedule}", f"run_dir={out / 'growth'}",
             f"data.path={args.data}"])
    growth_dirs = sorted((out / "growth").glob("stage*_*"))
    grown = curve(growth_dirs)
    large = OmegaConf.load(growth_dirs[-1] / "stage.yaml")
    schedule = OmegaConf.load(REPO / "configs/growth/schedule" / f"{args.schedule}.yaml")
    first = schedule.stages[0]
    per_step_large = flops_per_step(growth_dirs[-1] / "stage.yaml")
    scratch_iters = int(round(grown["flops"][-1] / per_step_large))
    m = large.model
    scratch_cmd = ([sys.executable, "-m", "pretrain", "model=tiny", "parallel=single", f"run_dir={out / 'scratch'}",
         f"data.path={args.data}", f"model.num_layers={m.num_layers}", f"model.hidden_size={m.hidden_size}",
         f"model.num_attention_heads={m.num_attention_heads}", f"model.num_query_groups={m.num_query_groups}",
         f"model.kv_channels={m.kv_channels}", f"model.ffn_hidden_size={m.ffn_hidden_size}",
         f"train.train_iters={scratch_iters}", f"train.lr={first.lr}", f"train.min_lr={first.min_lr}",
         f"train.lr_warmup_iters={first.warmup_iters}", f"train.lr_decay_iters={scratch_iters}",
         f"train.global_batch_size={large.train.global_batch_size}",
         f"train.micro_batch_size={large.train.micro_batch_size}", *schedule.trainer_overrides])
    if not args.analyse_only:
        run(scratch_cmd)
    scratch = curve([out / "scratch"])

    saved = compute_saved(grown, scratch)
    small_steps = len(read_metrics(growth_dirs[0])[0])
    small_flops = grown["flops"][small_steps - 1]
    for kind in saved.values():  # where the growth arm got there: inside its small stage, or after growth
        reach = kind["growth_flops_to_reach"]
        kind["reached_in"] = None if reach is None else ("small stage" if reach <= small_flops else "grown stage")
    target = saved["train_smoothed"]["scratch_final_loss"]
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": "2-core CPU (shared)",
        "wall_time_s": round(time.time() - started, 1),
        "growth_total_flops": grown["flops"][-1], "scratch_total_flops": scratch["flops"][-1],
        "compute_saved": saved,
        "final_smoothed": {"growth": grown["smoothed"][-1], "scratch": scratch["smoothed"][-1]},
        "final_eval": {"growth": grown["eval"][-1][1] if grown["eval"] else None,
                       "scratch": scratch["eval"][-1][1] if scratch["eval"] else None},
        "scratch_iters": scratch_iters, "growth_iters": len(grown["flops"]), "schedule": args.schedule,
        "small_stage_share_of_flops": small_flops / grown["flops"][-1],
        "small_stage_final": {"smoothed": grown["smoothed"][small_steps - 1],
                              "eval": max((p for p in grown["eval"] if p[0] <= small_flops), default=(0, None))[1]},
    }
    (out / "results.json").write_text(json.dumps({**result, "curves": {"growth": grown, "scratch": scratch}}))
    print(json.dumps(result, indent=1))
    growth_rows = [row for row in map(json.loads, (growth_dirs[-1] / "metrics.jsonl").read_text().splitlines())
                   if row.get("event") == "growth"]
    print("growth rows (step, mask at growth):", [(row["step"], row["ramp"]) for row in growth_rows])

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, c, color in (("grow small→large (MSG)", grown, "tab:blue"), ("large from scratch", scratch, "tab:orange")):
        ax.plot(c["flops"], c["loss"], color=color, alpha=0.25, lw=0.8)
        ax.plot(c["flops"], c["smoothed"], color=color, label=f"{name} (train, smoothed)")
        if c["eval"]:
            ax.plot(*zip(*c["eval"]), "o--", color=color, ms=4, lw=0.8, label=f"{name} (held-out)")
    boundary = small_flops
    ax.axvline(boundary, color="gray", ls=":", lw=1, label="growth")
    ax.axhline(target, color="black", lw=0.6, ls="--")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("loss")
    fraction = saved["train_smoothed"]["saved"]
    ax.set_title(f"{args.schedule}: Tele-FLM, demo corpus, 2-core CPU"
                 + (f": {fraction:.0%} less compute to reach scratch's loss" if fraction is not None else ""),
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "loss_vs_flops.png", dpi=120)


if __name__ == "__main__":
    main()
