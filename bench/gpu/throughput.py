"""Single-GPU training throughput of the Tele-FLM architecture, as the trainer runs it.

    python bench/gpu/throughput.py                      # ~1B (configs/model/1b.yaml), seq 4096, BF16 (+FP8 on H100)
    python bench/gpu/throughput.py --cpu-check          # the same path on a tiny model, to check the script on CPU

Each measurement is a real ``python -m pretrain`` run on random tokens from the 80k
Tele-FLM vocabulary (so the output layer has its real size); tokens/s, TFLOP/s per GPU
and MFU are the medians of the metrics.jsonl rows after the warm-up steps, as the
trainer itself computes them (pretrain/tools/flops.py: 6N + causal attention, dense
BF16 peak). ``--append-docs`` adds one row per measurement to docs/benchmarks.md with
the date, the device and the versions, so figures are never quoted without them.

Side by side, torchtitan (0.3.0, pinned) trains the same shape, batch and sequence
(``bench/gpu/torchtitan_same_shape.py``, one subprocess per row): with its default
FlexAttention and with SDPA. Its tokens/s are its own log's; its TFLOP/s and MFU are
recomputed with OUR formula so the rows compare, and each of our BF16 rows gets the
ratio of its tokens/s to the faster torchtitan row. torchtitan is imported from
``--torchtitan-site`` (run.sh installs it there, outside the project venv); when it is
missing or a torchtitan run fails, the row says so and our rows are still written.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VOCAB = 80_000
DOCS_HEADER = "## GPU training throughput (bench/gpu)"


def write_random_corpus(root: Path, vocab: int, documents: int, doc_tokens: int) -> Path:
    """An indexed corpus in the tokenizer stage's layout: uniform random ids (throughput only)."""
    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(0)
    indexed = root / "indexed"

    def write(prefix: Path, count: int) -> dict:
        prefix.parent.mkdir(parents=True, exist_ok=True)
        builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.int32)
        for _ in range(count):
            doc = np.append(rng.integers(3, vocab, doc_tokens), 2)
            builder.add_document(torch.from_numpy(doc.astype(np.int64)), [len(doc)])
        builder.finalize(str(prefix) + ".idx")
        tokens = count * (doc_tokens + 1)
        return {"prefix": str(prefix), "tokens": tokens, "documents": count, "bytes": tokens * 4}

    train = {"web": {**write(indexed / "train" / "web", documents), "weight": 1.0}}
    heldout = write(indexed / "heldout" / "by_source" / "web", 4)
    manifest = {"vocab_size": vocab, "eod_id": 2, "pad_id": 0, "bos_id": 1, "dtype": "int32",
                "tokenizer_model": str(indexed / "missing-tokenizer.model"), "train": train,
                "heldout": {"by_source": {"web": heldout}, "by_lang": {"en": heldout}}}
    (indexed / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return indexed


def measure(name: str, data: Path, work: Path, overrides: list[str], steps: int, warmup: int) -> dict:
    run_dir = work / name
    cmd = [sys.executable, "-m", "pretrain", f"data.path={data}", f"run_dir={run_dir}",
           f"train.train_iters={steps}", "train.eval_interval=0", "train.bpb_interval=0",
           "train.heldout_max_documents=1", "checkpoint.save_interval=0", "logging.wandb.mode=disabled",
           "logging.progress=false", *overrides]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{name}: {' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in rows if r.get("event") is None and r["step"] > warmup]
    start = next(r for r in rows if r.get("event") == "start")

    def median(key: str) -> float | None:
        values = [r[key] for r in steady if r.get(key) is not None]
        return statistics.median(values) if values else None

    return {"name": name, "overrides": overrides, "steps_measured": len(steady),
            "tokens_per_s": median("tokens_per_s"), "tflops_per_gpu": median("tflops_per_gpu"),
            "mfu": median("mfu"), "fast_path": start.get("fast_path"), "precision": start.get("precision")}


def measure_torchtitan(name: str, work: Path, site: Path | None, args: list[str]) -> dict:
    """One bench/gpu/torchtitan_same_shape.py run in a subprocess; a failure becomes an error row."""
    out_json = work / f"{name}.json"
    out_json.unlink(missing_ok=True)
    cmd = [sys.executable, str(REPO / "bench" / "gpu" / "torchtitan_same_shape.py"), "--name", name,
           "--work", str(work), "--out", str(out_json), *args]
    path = [str(site)] if site else []
    env = {**os.environ, "WANDB_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join([*path, str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if out.returncode != 0 or not out_json.exists():
        tail = (out.stdout[-1500:] + "\n" + out.stderr[-3000:]).strip()
        print(f"{name}: torchtitan run failed (rc {out.returncode}):\n{tail}", file=sys.stderr)
        if "--disable-cuda-graphs" not in args and "--cpu-check" not in args and "--check-only" not in args:
            # CUDA graphs are torchtitan 0.3.0's default and have never run here: one retry
            # without them keeps the comparison (the row's overrides say cuda_graphs=False).
            retry = measure_torchtitan(name, work, site, [*args, "--disable-cuda-graphs"])
            retry["first_attempt_error"] = f"rc {out.returncode}: {tail[-600:]}"
            return retry
        return {"name": name, "framework": "torchtitan 0.3.0", "error": f"rc {out.returncode}: {tail[-600:]}",
                "tokens_per_s": None, "tflops_per_gpu": None, "mfu": None, "overrides": args}
    return json.loads(out_json.read_text())


def torchtitan_ratios(results: list[dict]) -> None:
    """Ours / the faster torchtitan row, on tokens/s, for our BF16 rows (same shape, batch, sequence)."""
    titan = [r["tokens_per_s"] for r in results if r["name"].startswith("torchtitan") and r.get("tokens_per_s")]
    for r in results:
        if r["name"].startswith("torchtitan") or "fp8" in r["name"] or not titan or not r.get("tokens_per_s"):
            continue
        r["vs_torchtitan"] = r["tokens_per_s"] / max(titan)


def device_facts() -> dict:
    import torch

    facts = {"torch": torch.__version__, "device": "cpu", "transformer_engine": None, "torchtitan": None}
    if torch.cuda.is_available():
        facts["device"] = torch.cuda.get_device_name()
        facts["capability"] = list(torch.cuda.get_device_capability())
    try:
        import transformer_engine

        facts["transformer_engine"] = transformer_engine.__version__
    except Exception:
        pass
    return facts


def torchtitan_version(site: Path | None) -> str | None:
    from importlib.metadata import PathDistribution, PackageNotFoundError, version

    if site is not None:
        for info in site.glob("torchtitan-*.dist-info"):
            return PathDistribution(info).version
    try:
        return version("torchtitan")
    except PackageNotFoundError:
        return None


def append_docs(path: Path, results: list[dict], facts: dict) -> None:
    text = path.read_text() if path.exists() else ""
    if DOCS_HEADER not in text:
        text += (f"\n{DOCS_HEADER}\n\n`bash bench/gpu/run.sh` on one GPU; medians after warm-up; TFLOP/s and MFU "
                 "of every row, torchtitan's included, with our formula against the dense BF16 peak "
                 "(pretrain/tools/flops.py; torchtitan's own figures are in bench/gpu/results.json). "
                 "torchtitan rows: same shape, micro/global batch and sequence (bench/gpu/torchtitan_same_shape.py); "
                 "\"vs torchtitan\" is our tokens/s over the faster torchtitan BF16 row.\n\n"
                 "| date | device | torch / TE / torchtitan | run | tokens/s | TFLOP/s per GPU | MFU | vs torchtitan |\n"
                 "|---|---|---|---|---:|---:|---:|---:|\n")
    date = dt.date.today().isoformat()
    for r in results:
        if r.get("error"):
            text += (f"| {date} | {facts['device']} | {facts['torch']} / {facts['transformer_engine']} / "
                     f"{facts.get('torchtitan')} | {r['name']} | failed (bench/gpu/results.json) | | | |\n")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        tflops = f"{r['tflops_per_gpu']:.0f}" if r["tflops_per_gpu"] is not None else "n/a"
        ratio = f"{r['vs_torchtitan']:.2f}x" if r.get("vs_torchtitan") else ""
        text += (f"| {date} | {facts['device']} | {facts['torch']} / {facts['transformer_engine']} / "
                 f"{facts.get('torchtitan')} | {r['name']} | {r['tokens_per_s']:.0f} | {tflops} | {mfu} | {ratio} |\n")
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench_gpu")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--cpu-check", action="store_true", help="tiny model, few steps: check the script on CPU")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--append-docs", type=Path, default=None, help="append rows to this markdown file")
    parser.add_argument("--torchtitan-site", type=Path, default=REPO / "runs" / "bench_gpu" / "torchtitan_site",
                        help="directory holding torchtitan 0.3.0 and its extra packages (run.sh installs it)")
    parser.add_argument("--no-torchtitan", action="store_true", help="our rows only")
    args = parser.parse_args()

    facts = device_facts()
    work = args.work
    if args.cpu_check:
        data = write_random_corpus(work / "data", vocab=512, documents=40, doc_tokens=256)
        common = ["model=tiny", "model.seq_length=128", "train.micro_batch_size=2", "train.global_batch_size=2",
                  "train.lr_warmup_iters=1"]
        runs = [("tiny_fp32_cpu", common)]
        steps, warmup = 6, 2
    else:
        data = write_random_corpus(work / "data", vocab=VOCAB, documents=512, doc_tokens=4095)
        gbs = args.micro_batch * 8
        common = ["model=1b", "model.seq_length=4096", "parallel=single", "train.bf16=true",
                  f"train.micro_batch_size={args.micro_batch}", f"train.global_batch_size={gbs}",
                  "train.lr_warmup_iters=2"]
        runs = [("1b_seq4096_bf16_te", common)]
        if facts.get("capability", [0, 0]) >= [8, 9]:  # FP8 tensor cores (H100/H200)
            runs.append(("1b_seq4096_fp8_hybrid", [*common, "train.gpu.fp8=hybrid"]))
        steps, warmup = args.steps, args.warmup
    results = [measure(name, data, work, overrides, steps, warmup) for name, overrides in runs]
    if not args.no_torchtitan:
        site = args.torchtitan_site if args.torchtitan_site.exists() else None
        facts["torchtitan"] = torchtitan_version(site)
        if args.cpu_check and facts["torchtitan"] is None:
            print(f"torchtitan not installed (no {args.torchtitan_site}): CPU check of our row only", file=sys.stderr)
            titan_runs = []
        elif args.cpu_check:
            titan_runs = [("torchtitan_tiny_cpu", ["--cpu-check", "--global-batch", "2"])]
        else:
            same = ["--model", "1b", "--seq-len", "4096", "--micro-batch", str(args.micro_batch),
                    "--global-batch", str(args.micro_batch * 8), "--steps", str(steps), "--warmup", str(warmup)]
            titan_runs = [("torchtitan_1b_seq4096_bf16", [*same, "--attn-backend", "flex"]),
                          ("torchtitan_1b_seq4096_bf16_sdpa", [*same, "--attn-backend", "sdpa"])]
        results += [measure_torchtitan(name, work, site, a) for name, a in titan_runs]
        torchtitan_ratios(results)
    report = {"facts": facts, "results": results}
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    if args.append_docs:
        append_docs(args.append_docs, results, facts)


if __name__ == "__main__":
    main()
