"""Mu-scaling loss prediction, end to end on the demo corpus (2-core CPU scale).

    python bench/scaling/predict_loss.py --out runs/mup_bench/predict [--data TOK/indexed]

Why this shape: μScaling (arXiv 2304.06875) trains μP models of several widths
with one set of hyperparameters on the same data, fits L(N) = a·N^b + c and
predicts a larger model's loss.  Here: Tele-FLM's architecture at
``--layers`` layers, heads of ``--head-dim`` added for width (the smallest
width is the μP base), ``--fit-heads`` widths fitted, and a target with
``--target-heads`` heads, which has about 4x the non-vocabulary parameters of
the largest fitted model.  The prediction (with delta-method and residual-
bootstrap uncertainty) is written *before* the target is trained, then
compared with the target's real held-out loss.

Models are trained by ``pretrain.scaling.tiny_train`` (megatron's Tele-FLM
``GPTModel`` from ``pretrain.model.teleflm.build_model``, μP init and per-group Adam
LRs from ``pretrain.model.mup``, TP1 in one gloo process, torch AdamW): on a shared
2-core CPU, six short runs in one process avoid the trainer's per-run start-up,
data-cache and checkpoint costs.  N counts parameters without the vocabulary
matrices (input embedding and readout), as in Kaplan et al.

Without ``--data``, the demo corpus is cleaned and tokenized first
(``python -m data_pipeline`` then ``python -m tokenizer`` with
``--vocab-size`` and ``--character-coverage``) into ``<out>/data``.  Finished widths are reused on rerun.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--data", type=Path, default=None, help="tokenizer output's indexed/ dir (built if absent)")
    p.add_argument("--vocab-size", type=int, default=2048, help="tokenizer vocab when the data is built here")
    p.add_argument("--character-coverage", type=float, default=0.98,
                   help="SentencePiece coverage when built here (rare characters fall back to bytes; "
                        "the demo corpus has ~4800 distinct characters, more than a 2048 vocab)")
    p.add_argument("--fit-heads", default="2,3,4,6,8", help="head counts of the fitted widths")
    p.add_argument("--target-heads", type=int, default=16)
    p.add_argument("--head-dim", type=int, default=16)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3, help="vector-like LR (train.lr)")
    p.add_argument("--lr-matrix", type=float, default=3e-3, help="matrix-like LR at the base width")
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=60)
    p.add_argument("--init-std", type=float, default=0.02)
    p.add_argument("--eval-batches", type=int, default=16)
    p.add_argument("--bootstrap", type=int, default=300)
    p.add_argument("--seed", type=int, default=1234)
    return p.parse_args(argv)


def ensure_data(args: argparse.Namespace) -> Path:
    if args.data is not None:
        return args.data
    data_dir, tok_dir = args.out / "data" / "clean", args.out / "data" / "tok"
    if not (tok_dir / "indexed" / "manifest.json").is_file():
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, "-m", "data_pipeline", f"input={REPO_ROOT}/data/corpus/*.jsonl.gz",
                        f"output={data_dir}"], cwd=REPO_ROOT, env=env, check=True)
        subprocess.run([sys.executable, "-m", "tokenizer", f"input={data_dir}", f"output={tok_dir}",
                        f"tokenizer.vocab_size={args.vocab_size}",
                        f"tokenizer.training.character_coverage={args.character_coverage}"],
                       cwd=REPO_ROOT, env=env, check=True)
    return tok_dir / "indexed"


def base_config(args: argparse.Namespace, vocab_size: int):
    from hydra import compose, initialize_config_dir

    import pretrain.config.schema  # noqa: F401  registers pretrain_schema

    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs"), version_base=None):
        cfg = compose("pretrain", overrides=["model=tiny"])
    OmegaConf.set_struct(cfg, False)
    cfg.model.update(num_layers=args.layers, vocab_size=vocab_size, seq_length=args.seq,
                     init_method_std=args.init_std, embedding_init_std=args.init_std,
                     truncated_normal_init=False, input_mult=1.0, output_mult=1.0)
    cfg.train.update(seed=args.seed, lr=args.lr, lr_matrix=args.lr_matrix, min_lr=args.lr * args.min_lr_ratio,
                     lr_warmup_iters=args.warmup, lr_decay_iters=args.steps, lr_decay_style="cosine",
                     clip_grad=1.0, weight_decay=0.0, micro_batch_size=args.batch)
    return cfg


def non_vocab_parameters(model) -> int:
    return sum(p.numel() for name, p in model.named_parameters()
               if "word_embeddings" not in name and not name.startswith("output_layer"))


def train_width(cfg, heads: int, base_heads: int, args, train_stream, heldout, run_dir: Path) -> dict:
    """Train one width (or reuse its finished result) and return its summary."""
    from pretrain.scaling.tiny_train import build_single_process_model, evaluate, num_parameters, train
    from pretrain.scaling.tokens import window_batches
    from pretrain.scaling.widths import model_at_width, with_base

    result_path = run_dir / "result.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    model_cfg = with_base(model_at_width(cfg.model, heads, args.head_dim),
                          model_at_width(cfg.model, base_heads, args.head_dim))
    run_cfg = OmegaConf.merge(cfg, {"model": model_cfg})
    model = build_single_process_model(run_cfg)
    metrics = (run_dir / "metrics.jsonl").open("w")
    started = time.perf_counter()
    history = train(run_cfg, model, window_batches(train_stream, args.batch, args.seq, seed=args.seed),
                    steps=args.steps, on_step=lambda row: metrics.write(json.dumps(row) + "\n"))
    metrics.close()
    eval_loss = evaluate(model, heldout)
    tokens = args.steps * args.batch * args.seq
    total = num_parameters(model, non_embedding=False)
    result = {"heads": heads, "hidden": heads * args.head_dim, "ffn": int(model_cfg.ffn_hidden_size),
              "non_vocab_params": non_vocab_parameters(model), "total_params": total,
              "tokens": tokens, "compute_flops": 6.0 * total * tokens, "eval_loss": eval_loss,
              "final_train_loss": float(np.mean([h["loss"] for h in history[-10:]])),
              "seconds": time.perf_counter() - started}
    OmegaConf.save(run_cfg, run_dir / "config.yaml")
    result_path.write_text(json.dumps(result, indent=1))
    print(f"  width {result['hidden']}: N={result['non_vocab_params']:,} eval loss {eval_loss:.4f} "
          f"({result['seconds']:.0f} s)", flush=True)
    return result


def prediction(points: list[dict], target_n: float, key: str, samples: int, seed: int) -> dict:
    from pretrain.scaling.fit import bootstrap_predictions, fit_power_law

    n = np.asarray([p[key] for p in points], float)
    loss = np.asarray([p["eval_loss"] for p in points], float)
    fit = fit_power_law(n, loss)
    boot = bootstrap_predictions(n, loss, target_n, samples=samples, seed=seed)
    return {"fit": {"a": fit.a, "b": fit.b, "c": fit.c, "n_scale": fit.scale, "rms_residual": fit.rms_residual},
            "x": key, "target_x": target_n, "predicted": float(fit.predict(target_n)),
            "std_delta": fit.predict_std(target_n),
            "std_bootstrap": float(np.std(boot)) if boot.size else None,
            "interval_95_bootstrap": [float(v) for v in np.percentile(boot, [2.5, 97.5])] if boot.size else None,
            "bootstrap_samples": int(boot.size)}


def plot(points: list[dict], target: dict, pred_n: dict, pred_c: dict, histories: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pretrain.scaling.fit import power_law

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    n = np.asarray([p["non_vocab_params"] for p in points], float)
    grid = np.geomspace(n.min() * 0.8, target["non_vocab_params"] * 1.3, 100)
    f = pred_n["fit"]
    ax1.plot(n, [p["eval_loss"] for p in points], "o", label="fitted widths")
    ax1.plot(grid, power_law(grid / f["n_scale"], f["a"], f["b"], f["c"]), "-",
             label=f"L = {f['a']:.3g}·(N/{f['n_scale']:.3g})^{f['b']:.3f} + {f['c']:.3f}")
    lo, hi = pred_n["interval_95_bootstrap"] or [pred_n["predicted"]] * 2
    ax1.errorbar([target["non_vocab_params"]], [pred_n["predicted"]],
                 yerr=[[pred_n["predicted"] - lo], [hi - pred_n["predicted"]]], fmt="s", capsize=4,
                 label="predicted (95% bootstrap)")
    ax1.plot([target["non_vocab_params"]], [target["eval_loss"]], "*", markersize=12, label="actual")
    ax1.set_xscale("log")
    ax1.set_xlabel("non-vocabulary parameters N")
    ax1.set_ylabel("held-out loss (nats/token)")
    ax1.legend(fontsize=7)
    ax1.set_title("L(N), μP widths, same hyperparameters")
    for hidden, rows in sorted(histories.items()):
        per_step = rows["flops_per_step"]
        steps = np.asarray([r["step"] for r in rows["history"]])
        loss = np.asarray([r["loss"] for r in rows["history"]])
        smooth = np.convolve(loss, np.ones(10) / 10, mode="valid")
        ax2.plot(steps[9:] * per_step, smooth, linewidth=1, label=f"w{hidden}")
    fc = pred_c["fit"]
    cgrid = np.geomspace(min(p["compute_flops"] for p in points) * 0.5, target["compute_flops"] * 1.5, 100)
    ax2.plot(cgrid, power_law(cgrid / fc["n_scale"], fc["a"], fc["b"], fc["c"]), "k--", label="L(C) fit (final)")
    ax2.plot([target["compute_flops"]], [target["eval_loss"]], "*", markersize=12, color="k")
    ax2.set_xscale("log")
    ax2.set_xlabel("training compute C = 6·N_total·D (FLOPs)")
    ax2.set_ylabel("train loss (10-step mean) / held-out")
    ax2.set_ylim(top=float(np.percentile([r["loss"] for v in histories.values() for r in v["history"]], 60)))
    ax2.legend(fontsize=6)
    ax2.set_title("loss vs compute")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = ensure_data(args)

    from pretrain.scaling.tokens import fixed_batches, load_token_stream, vocab_size_of

    cfg = base_config(args, vocab_size_of(data))
    train_stream = load_token_stream(data, "train")
    heldout = fixed_batches(load_token_stream(data, "heldout"), args.batch, args.seq, args.eval_batches)
    fit_heads = [int(h) for h in args.fit_heads.split(",")]
    base_heads = min(fit_heads)
    print(f"data {data}: {train_stream.size:,} train tokens; training {len(fit_heads)} widths "
          f"{[h * args.head_dim for h in fit_heads]} for {args.steps} steps", flush=True)
    points = [train_width(cfg, h, base_heads, args, train_stream, heldout, args.out / "runs" / f"w{h * args.head_dim}")
              for h in fit_heads]

    # Predict the target before training it.
    from pretrain.scaling.tiny_train import build_single_process_model
    from pretrain.scaling.widths import model_at_width, with_base

    target_cfg = OmegaConf.merge(cfg, {"model": with_base(model_at_width(cfg.model, args.target_heads, args.head_dim),
                                                          model_at_width(cfg.model, base_heads, args.head_dim))})
    probe = build_single_process_model(target_cfg)
    from pretrain.scaling.tiny_train import num_parameters

    target_n = non_vocab_parameters(probe)
    target_c = 6.0 * num_parameters(probe, non_embedding=False) * args.steps * args.batch * args.seq
    del probe
    pred_n = prediction(points, target_n, "non_vocab_params", args.bootstrap, args.seed)
    pred_c = prediction(points, target_c, "compute_flops", args.bootstrap, args.seed)
    (args.out / "prediction.json").write_text(json.dumps({"L(N)": pred_n, "L(C)": pred_c}, indent=1))
    print(f"predicted target (N={target_n:,}): {pred_n['predicted']:.4f} ± {pred_n['std_bootstrap']:.4f}", flush=True)

    target = train_width(cfg, args.target_heads, base_heads, args, train_stream, heldout,
                         args.out / "runs" / f"w{args.target_heads * args.head_dim}")
    error = {k: (p["predicted"] - target["eval_loss"]) / target["eval_loss"] for k, p in
             (("L(N)", pred_n), ("L(C)", pred_c))}
    histories = {}
    for p in points + [target]:
        rows = [json.loads(l) for l in (args.out / "runs" / f"w{p['hidden']}" / "metrics.jsonl").read_text().splitlines()]
        histories[p["hidden"]] = {"history": rows, "flops_per_step": p["compute_flops"] / args.steps}
    plot(points, target, pred_n, pred_c, histories, args.out / "prediction.png")
    report = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "hardware": "2-core CPU (shared)",
              "args": {k: str(v) for k, v in vars(args).items()}, "data": str(data),
              "fitted": points, "target": target, "prediction": {"L(N)": pred_n, "L(C)": pred_c},
              "relative_error": error, "ratio_target_to_largest_N": target_n / max(p["non_vocab_params"] for p in points),
              "wall_seconds": time.perf_counter() - started}
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    (args.out / "report.md").write_text(markdown(report))
    print(markdown(report), flush=True)
    return report


def markdown(r: dict) -> str:
    pn, pc = r["prediction"]["L(N)"], r["prediction"]["L(C)"]
    lines = [f"# μP loss prediction ({r['date_utc']} UTC, {r['hardware']})", "",
             "| hidden | heads | N (non-vocab) | total params | held-out loss | train s |", "|---|---|---|---|---|---|"]
    for p in r["fitted"] + [r["target"]]:
        tag = " (target)" if p is r["target"] else ""
        lines.append(f"| {p['hidden']}{tag} | {p['heads']} | {p['non_vocab_params']:,} | {p['total_params']:,} | "
                     f"{p['eval_loss']:.4f} | {p['seconds']:.0f} |")
    f = pn["fit"]
    lines += ["", f"Fit L(N) = {f['a']:.4g}·(N/{f['n_scale']:.4g})^{f['b']:.4f} + {f['c']:.4f} "
              f"(rms residual {f['rms_residual']:.4f}).",
              f"Target N is {r['ratio_target_to_largest_N']:.2f}x the largest fitted model.", "",
              "| predictor | predicted | ± delta std | ± bootstrap std | 95% bootstrap | actual | error |",
              "|---|---|---|---|---|---|---|"]
    for name, p in (("L(N)", pn), ("L(C)", pc)):
        interval = p["interval_95_bootstrap"] or [math.nan, math.nan]
        lines.append(f"| {name} | {p['predicted']:.4f} | {p['std_delta']:.4f} | {p['std_bootstrap'] or math.nan:.4f} | "
                     f"[{interval[0]:.4f}, {interval[1]:.4f}] | {r['target']['eval_loss']:.4f} | "
                     f"{100 * r['relative_error'][name]:+.2f}% |")
    lines += ["", f"Wall time {r['wall_seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
