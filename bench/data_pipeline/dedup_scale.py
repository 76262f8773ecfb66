"""How the global dedup step grows with the corpus: driver-side (legacy) vs distributed, on synthetic stage-1 files.

    python bench/data_pipeline/dedup_scale.py --docs 200000 600000 2000000 --out /tmp/dedup_scale

Dedup reads only the stage-1 columns ``id, doc_id, status, lang, exact_hash,
bands, signature``, so the corpus is generated at that level, without text:
every document gets a random 144-value MinHash signature (unrelated documents
then agree on no position and share no band) and 30% of the documents are
planted copies of an earlier one: a third exact (same exact hash and
signature), the rest near, with 50-90% of the signature positions kept (the
estimated Jaccard of the pair). Band keys hash each band's 3 values in numpy
(the pipeline uses xxh64 per band; dedup only needs equal bands to give equal
keys). The planted copies are the truth: a copy's original has a smaller id,
so exactly the copies should go.

Each (size, implementation) runs in a fresh process with its own local Ray
(``--cpus``, default 2). While ``find_duplicates`` runs, a thread samples every
50 ms the RSS of that process (the driver) and of every Ray worker process
(``ray::`` in the name), keeping the driver's peak, the largest single worker
and the largest sum over workers. Recall and precision are computed afterwards
(the removal set is read back then, outside the measured window).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
NUM_PERM, BANDS, ROWS = 144, 48, 3
COPY_FRACTION = 0.3
FILES = 16


def band_keys(sig: np.ndarray) -> np.ndarray:
    """(n, BANDS) uint64 keys: a multiply-xorshift of each band's ROWS values and the band index."""
    v = sig[:, :BANDS * ROWS].astype(np.uint64).reshape(len(sig), BANDS, ROWS)
    h = np.arange(BANDS, dtype=np.uint64)[None, :] * np.uint64(0x9E3779B97F4A7C15)
    for r in range(ROWS):
        h = (h ^ v[:, :, r]) * np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
    return h


def generate(n: int, out: Path, seed: int = 0) -> dict:
    """Write FILES stage-1-like part files of ``n`` documents; return the truth (planted copy ids)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    n_copies = int(n * COPY_FRACTION)
    is_copy = np.zeros(n, dtype=bool)
    is_copy[rng.choice(np.arange(n // 10, n), n_copies, replace=False)] = True  # the first 10% are all originals
    sig = rng.integers(0, 1 << 32, size=(n, NUM_PERM), dtype=np.uint32)
    exact_hash = rng.integers(0, 1 << 63, size=n, dtype=np.uint64)
    copies = np.flatnonzero(is_copy)
    originals = (rng.random(len(copies)) * copies).astype(np.int64)  # any earlier document (maybe a copy itself)
    kind = rng.integers(0, 3, size=len(copies))  # 0: exact, 1-2: near
    keep = rng.uniform(0.5, 0.9, size=len(copies))
    for c, o, k, s in zip(copies, originals, kind, keep):  # in id order: a copy of a copy copies its final form
        if k == 0:
            sig[c], exact_hash[c] = sig[o], exact_hash[o]
        else:
            mask = rng.random(NUM_PERM) < s
            sig[c] = np.where(mask, sig[o], sig[c])
    bands = band_keys(sig)
    ids = np.array([f"doc-{i:010d}" for i in range(n)], dtype=object)
    for f, rows in enumerate(np.array_split(np.arange(n), FILES)):
        table = pa.table({
            "id": pa.array(ids[rows].tolist(), pa.string()),
            "doc_id": pa.array([f"{f:05d}-synthetic:{i + 1}" for i in range(len(rows))], pa.string()),
            "status": pa.array(["kept"] * len(rows), pa.string()),
            "lang": pa.array(np.where(rows % 2 == 0, "en", "zh").tolist(), pa.string()),
            "exact_hash": pa.array(exact_hash[rows], pa.uint64()),
            "bands": pa.ListArray.from_arrays(np.arange(len(rows) + 1, dtype=np.int32) * BANDS,
                                              pa.array(bands[rows].ravel(), pa.uint64())),
            "signature": pa.ListArray.from_arrays(np.arange(len(rows) + 1, dtype=np.int32) * NUM_PERM,
                                                  pa.array(sig[rows].ravel(), pa.uint32())),
        })
        pq.write_table(table, out / f"part-{f:05d}.parquet", compression="zstd")
    truth = {"copies": int(len(copies)), "exact": int((kind == 0).sum())}
    np.save(out / "copies.npy", copies)
    (out / "truth.json").write_text(json.dumps(truth))
    return truth


class Sampler:
    """Peak RSS of this process and of Ray's worker processes, sampled in a thread."""

    def __init__(self, period: float = 0.05) -> None:
        import psutil

        self.me = psutil.Process()
        self.period = period
        self.driver = self.worker = self.workers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            self.driver = max(self.driver, self.me.memory_info().rss)
            total = 0
            for p in self.me.children(recursive=True):  # this run's Ray only: raylet and workers descend from us
                try:
                    if p.name().startswith("ray::"):
                        rss = p.memory_info().rss
                        total += rss
                        self.worker = max(self.worker, rss)
                except psutil.Error:
                    pass
            self.workers = max(self.workers, total)
            time.sleep(self.period)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class Cfg(dict):
    """The config as both implementations read it: attribute access over a plain dict."""

    __getattr__ = dict.__getitem__


def doc_index(doc_id: str, per_file_offsets: list[int]) -> int:
    """Synthetic doc_id ``FFFFF-synthetic:LINE`` -> global document index."""
    f, line = doc_id.split("-synthetic:")
    return per_file_offsets[int(f)] + int(line) - 1


def measure(corpus: Path, impl: str, cpus: int, partitions: int) -> dict:
    """One run of one implementation on one corpus, in this (fresh) process."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import ray

    from data_pipeline import dedup, dedup_legacy
    from data_pipeline.removal_set import read_removals

    files = sorted(str(p) for p in corpus.glob("part-*.parquet"))
    raw = {"dedup": {"exact": True, "fuzzy": True, "num_perm": NUM_PERM, "bands": BANDS, "rows": ROWS,
                     "threshold": {"default": 0.25}, "shuffle_partitions": partitions}}
    cfg = Cfg(dedup=Cfg(raw["dedup"]))
    for attempt in range(3):  # a loaded shared machine sometimes misses the raylet's 30 s start deadline
        try:
            ray.init(num_cpus=cpus, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    ray.get([ray.remote(lambda: 0).remote() for _ in range(cpus)])  # workers up before the clock starts
    import psutil

    base = psutil.Process().memory_info().rss
    work = corpus / f"work-{impl}"
    t0 = time.time()
    with Sampler() as s:
        if impl == "legacy":
            removed, stats = dedup_legacy.find_duplicates(files, cfg)
        else:
            stats = dedup.find_duplicates(files, cfg, work)
    seconds = time.time() - t0
    ray.shutdown()
    sizes = [pq.ParquetFile(f).metadata.num_rows for f in files]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    if impl == "legacy":
        got = np.array([doc_index(d, offsets) for d in removed], dtype=np.int64)
    else:
        got = []
        for i in range(len(files)):
            table = read_removals(dedup.removal_dir(work), i, partitions)
            table = table.filter(pc.is_valid(table.column("reason")))
            got.append(offsets[i] + table.column("row").to_numpy())
        got = np.concatenate(got).astype(np.int64)
    copies = np.load(corpus / "copies.npy")
    hit = len(np.intersect1d(got, copies))
    return {"impl": impl, "docs": int(offsets[-1]), "seconds": round(seconds, 1),
            "driver_base_mb": round(base / 2**20), "driver_peak_mb": round(s.driver / 2**20),
            "driver_growth_mb": round((s.driver - base) / 2**20),
            "worker_peak_mb": round(s.worker / 2**20), "workers_sum_peak_mb": round(s.workers / 2**20),
            "removed": int(len(got)), "planted": int(len(copies)),
            "recall": round(hit / len(copies), 4), "precision": round(hit / max(1, len(got)), 4),
            "stats": stats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, nargs="+", default=[200_000, 600_000, 2_000_000])
    ap.add_argument("--impl", nargs="+", default=["legacy", "distributed"])
    ap.add_argument("--out", type=Path, default=Path("/tmp/dedup_scale"))
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--timeout", type=int, default=1800, help="seconds one run may take before it is abandoned")
    ap.add_argument("--measure", nargs=2, metavar=("CORPUS", "IMPL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), args.measure[1], args.cpus, args.partitions)))
        return
    results = []
    for n in args.docs:
        corpus = args.out / f"docs-{n}"
        if not (corpus / "truth.json").exists():
            t0 = time.time()
            generate(n, corpus)
            print(f"generated {n} docs in {time.time() - t0:.0f} s", flush=True)
        for impl in args.impl:
            env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
            cmd = [sys.executable, __file__, "--measure", str(corpus), impl, "--cpus", str(args.cpus),
                   "--partitions", str(args.partitions)]
            try:
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
                row = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else \
                    {"impl": impl, "docs": n, "error": proc.stderr[-600:]}
            except subprocess.TimeoutExpired:
                row = {"impl": impl, "docs": n, "error": f"did not finish in {args.timeout} s"}
            results.append(row)
            print(json.dumps(row), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
