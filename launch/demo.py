"""`make demo`: run every stage end to end on the embedded corpus and summarise.

Each stage is run through its own command line (`python -m data_pipeline`, ...)
in a subprocess, so the demo exercises exactly what a user runs, and a crash in
one stage names that stage and its log instead of a stack trace from deep in
an orchestrator. Stage output streams to the terminal (the stages draw their own
progress bars) and to `RUN/logs/<stage>.log`.

The pretraining stage runs twice: first to `first_iters` (saving checkpoints),
then again to `train_iters`, which resumes from the latest checkpoint: the demo
shows a resume along the way, not only in tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from omegaconf import DictConfig

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class StageResult:
    name: str
    seconds: float
    log: Path
    details: dict = field(default_factory=dict)


class StageFailed(RuntimeError):
    pass


def run_stage(name: str, argv: list[str], log_dir: Path) -> StageResult:
    """Run one stage CLI, tee its output to a log, raise with the log path on failure."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    banner = f"\n━━ {name} ━━ {' '.join(argv)}"
    print(banner, flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        code = proc.wait()
    seconds = time.perf_counter() - start
    if code != 0:
        raise StageFailed(f"stage '{name}' failed with exit code {code} after {seconds:.0f} s; "
                          f"full output in {log_path}")
    print(f"━━ {name} done in {seconds:.1f} s", flush=True)
    return StageResult(name, seconds, log_path)


def python_module(module: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", module, *overrides]


def planted_junk_removed(ground_truth: Path, data_dir: Path) -> tuple[int, int]:
    """How many planted junk records (duplicates, boilerplate, ...) did not reach the output."""
    import pyarrow.parquet as pq

    kept: set[str] = set()
    for sub in ("shards", "heldout"):
        for part in sorted((data_dir / sub).glob("*.parquet")):
            kept.update(pq.read_table(part, columns=["id"]).column("id").to_pylist())
    planted = [json.loads(line) for line in ground_truth.read_text(encoding="utf-8").splitlines() if line]
    junk = [row for row in planted if row["kind"] != "malformed"]
    removed = sum(1 for row in junk if row["id"] not in kept)
    return removed, len(junk)


def read_metrics(run_dir: Path) -> list[dict]:
    """Per-step rows of metrics.jsonl (event rows such as checkpoints and evals left out)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if "event" not in row and "loss" in row]


def generate_samples(hf_dir: Path, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Generate with stock transformers from the exported directory (no custom code)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.eval()
    samples = []
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        torch.manual_seed(0)  # seeded sampling: a demo model this small loops under greedy decoding
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=True, top_k=40,
                                 temperature=0.8, pad_token_id=tokenizer.pad_token_id)
        samples.append(tokenizer.decode(out[0], skip_special_tokens=True))
    return samples


def print_summary(cfg: DictConfig, run_dir: Path, results: list[StageResult], extra: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    stages = Table(title="Demo: stages", show_lines=False)
    for col in ("stage", "seconds", "result"):
        stages.add_column(col)
    for res in results:
        stages.add_row(res.name, f"{res.seconds:.1f}", res.details.get("result", ""))
    console.print(stages)
    outputs = Table(title="Where everything is")
    outputs.add_column("what")
    outputs.add_column("path")
    for what, path in extra["paths"].items():
        outputs.add_row(what, str(path))
    console.print(outputs)
    heldout = extra.get("heldout") or {}
    if heldout.get("by_lang"):
        bpb = Table(title=f"Held-out evaluation at step {heldout.get('step')} (never trained on)")
        for col in ("group", "name", "loss", "perplexity", "bits per byte", "tokens"):
            bpb.add_column(col)
        for kind in ("by_lang", "by_source"):
            for name, row in heldout.get(kind, {}).items():
                bits = f"{row['bpb']:.3f}" if row.get("bpb") is not None else "n/a"
                bpb.add_row(kind[3:], name, f"{row['loss']:.3f}", f"{row['perplexity']:.1f}", bits,
                            str(row["tokens"]))
        console.print(bpb)
    for prompt, sample in zip(cfg.generate.prompts, extra.get("samples", [])):
        console.print(f"[bold]sample[/bold] ({prompt!r}): {sample!r}")


def run_demo(cfg: DictConfig) -> dict:
    run_dir = (REPO_ROOT / cfg.run_dir).resolve()
    logs = run_dir / "logs"
    data_dir, tok_dir, train_dir, hf_dir = (run_dir / "data", run_dir / "tokenizer",
                                            run_dir / "pretrain", run_dir / "hf")
    results: list[StageResult] = []
    total_start = time.perf_counter()

    res = run_stage("data_pipeline", python_module(
        "data_pipeline", f"input={cfg.corpus}", f"output={data_dir}", *cfg.data_pipeline.overrides), logs)
    report = json.loads((data_dir / "report.json").read_text())
    removed, planted = planted_junk_removed(REPO_ROOT / cfg.ground_truth, data_dir)
    res.details = {"report": report, "planted_removed": removed, "planted": planted,
                   "result": f"{report.get('kept', '?')} of {report.get('input', '?')} records kept; "
                             f"planted junk removed {removed}/{planted}"}
    results.append(res)

    res = run_stage("tokenizer", python_module(
        "tokenizer", f"input={data_dir}", f"output={tok_dir}", *cfg.tokenizer.overrides), logs)
    manifest = json.loads((tok_dir / "indexed" / "manifest.json").read_text())
    tokens = sum(s["tokens"] for s in manifest["train"].values())
    res.details = {"manifest": manifest,
                   "result": f"vocab {manifest['vocab_size']}, {tokens:,} training tokens in "
                             f"{len(manifest['train'])} sources"}
    results.append(res)

    common = [f"model={cfg.pretrain.model}", f"parallel={cfg.pretrain.parallel}",
              f"data.path={tok_dir / 'indexed'}", f"run_dir={train_dir}",
              f"checkpoint.save_interval={cfg.pretrain.save_interval}",
              # one LR schedule over the whole run, so stopping early and resuming changes nothing
              f"train.lr_decay_iters={cfg.pretrain.train_iters}", *cfg.pretrain.overrides]
    first = run_stage("pretrain (to checkpoint)", python_module(
        "pretrain", *common, f"train.train_iters={cfg.pretrain.first_iters}"), logs)
    first.details = {"result": f"stopped at step {cfg.pretrain.first_iters} with a checkpoint"}
    results.append(first)
    second = run_stage("pretrain (resumed)", python_module(
        "pretrain", *common, f"train.train_iters={cfg.pretrain.train_iters}"), logs)
    metrics = read_metrics(train_dir)
    train_summary = json.loads((train_dir / "summary.json").read_text())
    losses = [m["loss"] for m in metrics]
    head, tail = losses[:10], losses[-10:]
    first_loss, last_loss = sum(head) / len(head), sum(tail) / len(tail)
    second.details = {"first_loss": first_loss, "last_loss": last_loss,
                      "result": f"loss {first_loss:.2f} -> {last_loss:.2f} (mean of first/last 10 steps) "
                                f"over {len(losses)} steps"}
    results.append(second)
    if not last_loss < first_loss - cfg.min_loss_drop:
        raise StageFailed(f"the loss did not fall clearly: {first_loss:.3f} -> {last_loss:.3f}")

    samples: list[str] = []
    if cfg.export.enabled:
        res = run_stage("export to Hugging Face", python_module(
            "launch.export_hf", f"checkpoint={train_dir / 'checkpoints'}", f"output={hf_dir}"), logs)
        start = time.perf_counter()
        samples = generate_samples(hf_dir, list(cfg.generate.prompts), cfg.generate.max_new_tokens)
        res.seconds += time.perf_counter() - start
        res.details = {"result": f"loaded by transformers, {len(samples)} samples generated"}
        results.append(res)

    paths = {
        "data report": data_dir / "report.md",
        "cleaned shards": data_dir / "shards",
        "tokenizer": tok_dir / "tokenizer.model",
        "tokenizer evaluation": tok_dir / "eval" / "eval.md",
        "indexed datasets": tok_dir / "indexed",
        "training metrics": train_dir / "metrics.jsonl",
        "loss curve": train_dir / "loss.png",
        "checkpoints": train_dir / "checkpoints",
        "Hugging Face model": hf_dir,
        "logs": logs,
    }
    summary = {"total_seconds": time.perf_counter() - total_start,
               "stages": [{"name": r.name, "seconds": r.seconds, "result": r.details.get("result", "")}
                          for r in results],
               "first_loss": first_loss, "last_loss": last_loss,
               "planted_removed": removed, "planted": planted,
               "heldout": train_summary.get("heldout"),
               "samples": samples, "paths": {k: str(v) for k, v in paths.items()}}
    (run_dir / "demo_summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    print_summary(cfg, run_dir, results, {"paths": paths, "samples": samples,
                                          "heldout": train_summary.get("heldout")})
    print(f"\nDemo finished in {summary['total_seconds']:.0f} s; summary in {run_dir / 'demo_summary.json'}")
    return summary


@hydra.main(config_path="../configs", config_name="demo", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        run_demo(cfg)
    except StageFailed as err:
        print(f"\nDEMO FAILED: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
