"""Encoding throughput: plain single-process SentencePiece vs the Ray shard encoder at 1 and 2 workers.

Run:  OMP_NUM_THREADS=1 python bench/tokenizer/bench_encode.py [--copies 3] [--out results.json]

All three measurements run in one process on the same shards with the same model:
  * sentencepiece_loop: read each parquet shard and sp.encode() its texts, nothing written;
  * ray_1_worker / ray_2_workers: tokenizer.shard_encoder.encode_shard as Ray tasks (the real
    encode step's per-shard work: read, encode, write .bin/.idx), 1 or 2 running at a time.
Ray is started once with 2 CPUs; "1 worker" runs tasks that each claim both CPUs.  Workers are
warmed up first so process start-up and imports are not timed (they are a fixed cost per run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import ray  # noqa: E402
import sentencepiece as spm  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from tokenizer.data_source import iter_batches, list_shards  # noqa: E402
from tokenizer.demo_data import write_data_dir  # noqa: E402
from tokenizer.shard_encoder import ShardJob, encode_shard  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def make_inputs(work: Path, copies: int, vocab_size: int) -> tuple[list[Path], Path]:
    """The demo corpus as 4 shards, repeated `copies` times, and a demo-config tokenizer trained on it."""
    data = write_data_dir(work / "data", num_shards=4)
    shards = list_shards(data, "shards")
    for copy in range(1, copies):
        for shard in list(shards[:4]):
            target = shard.with_name(f"part-{copy * 4 + int(shard.stem.split('-')[1]):05d}.parquet")
            shutil.copy(shard, target)
    with initialize_config_dir(version_base=None, config_dir=str(REPO / "configs")):
        cfg = compose("tokenizer", overrides=[f"input={data}", f"output={work / 'tok'}",
                                              f"tokenizer.vocab_size={vocab_size}"])
    from tokenizer.train import train_tokenizer

    return list_shards(data, "shards"), train_tokenizer(cfg)


def timed_encode_shard(job: ShardJob) -> dict:
    """encode_shard plus the CPU seconds it used: wall time on a shared machine mostly measures the neighbours."""
    cpu = time.process_time()
    result = encode_shard(job)
    return result | {"cpu_seconds": time.process_time() - cpu}


def sentencepiece_loop(shards: list[Path], model: Path, batch_size: int) -> dict:
    processor = spm.SentencePieceProcessor(model_file=str(model))
    started, cpu, tokens, size = time.perf_counter(), time.process_time(), 0, 0
    for shard in shards:
        for batch in iter_batches(shard, ("text",), batch_size):
            tokens += sum(len(ids) + 1 for ids in processor.encode(batch["text"]))
            size += sum(len(t.encode("utf-8")) for t in batch["text"])
    return {"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu,
            "tokens": tokens, "bytes": size, "cores": 1}


def ray_encode(shards: list[Path], model: Path, out: Path, workers: int, batch_size: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    remote = ray.remote(num_cpus=2 // workers)(timed_encode_shard)
    jobs = [ShardJob(shard=str(s), out_dir=str(out / s.stem), group_by=("source",), model_path=str(model),
                     batch_size=batch_size) for s in shards]
    started = time.perf_counter()
    results = ray.get([remote.remote(job) for job in jobs])
    seconds = time.perf_counter() - started
    tokens = sum(e["tokens"] for r in results for e in r["groups"]["source"].values())
    size = sum(e["bytes"] for r in results for e in r["groups"]["source"].values())
    return {"seconds": seconds, "cpu_seconds": sum(r["cpu_seconds"] for r in results), "tokens": tokens,
            "bytes": size, "cores": workers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=3, help="times the demo corpus is repeated")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tok_bench_"))
    shards, model = make_inputs(work, args.copies, args.vocab_size)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    warm = ray.remote(num_cpus=1)(lambda: __import__("tokenizer.shard_encoder") is not None)
    ray.get([warm.remote() for _ in range(2)])

    runs = {"sentencepiece_loop": sentencepiece_loop(shards, model, args.batch_size),
            "ray_1_worker": ray_encode(shards, model, work / "out1", 1, args.batch_size),
            "ray_2_workers": ray_encode(shards, model, work / "out2", 2, args.batch_size)}
    ray.shutdown()
    for run in runs.values():
        run["tokens_per_s"] = run["tokens"] / run["seconds"]
        run["tokens_per_s_per_core"] = run["tokens_per_s"] / run["cores"]
        run["mb_per_s"] = run["bytes"] / run["seconds"] / 1e6
        run["tokens_per_cpu_s"] = run["tokens"] / run["cpu_seconds"]
    report = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
              "load_average_at_end": os.getloadavg(), "shards": len(shards), "vocab_size": args.vocab_size,
              "runs": runs,
              "speedup_2_vs_1_worker": runs["ray_1_worker"]["seconds"] / runs["ray_2_workers"]["seconds"]}
    print(f"{'run':20s} {'seconds':>8s} {'tokens':>10s} {'tok/s':>10s} {'tok/s/core':>11s} {'MB/s':>6s} "
          f"{'tok/CPU-s':>10s}")
    for name, run in runs.items():
        print(f"{name:20s} {run['seconds']:8.2f} {run['tokens']:10d} {run['tokens_per_s']:10.0f} "
              f"{run['tokens_per_s_per_core']:11.0f} {run['mb_per_s']:6.2f} {run['tokens_per_cpu_s']:10.0f}")
    print(f"speedup 2 vs 1 Ray worker: {report['speedup_2_vs_1_worker']:.2f}x; load average {report['load_average_at_end']}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
