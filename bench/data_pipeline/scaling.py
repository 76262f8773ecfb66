"""How time and memory grow with corpus size: run the CLI at several sizes, sample the process tree's RSS.

    python bench/data_pipeline/scaling.py --mb 4 8 16 --out /tmp/dp_scaling

Each size is a fresh corpus from bench.py's generator (en and zh halves) and a
fresh ``python -m data_pipeline`` process with its own local Ray; the peak is
the largest sum of resident memory over that process and all its descendants
(raylet, workers, object store), sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import REPO, generate  # noqa: E402


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(inp: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    start = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "data_pipeline", f"input={inp}/*.jsonl.gz", f"output={out}",
                             "ray.progress=false"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    peak = 0
    ps = psutil.Process(proc.pid)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(ps))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"pipeline failed with {proc.returncode}")
    report = json.loads((out / "report.json").read_text())
    return {"seconds": round(time.time() - start, 1), "peak_rss_mb": round(peak / 2**20), "input": report["input"],
            "steps": report["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, nargs="+", default=[4, 8, 16])
    parser.add_argument("--out", type=Path, default=Path("/tmp/dp_scaling"))
    args = parser.parse_args()
    rows = []
    for mb in args.mb:
        inp = args.out / f"input_{mb:g}"
        shutil.rmtree(inp, ignore_errors=True)
        sizes = [generate(inp, lang, mb / 2, 0.1, 4, seed=11) for lang in ("en", "zh")]
        row = {"mb": mb, "documents": sum(s["documents"] for s in sizes), **measure(inp, args.out / f"out_{mb:g}")}
        row["mb_per_s"] = round(sum(s["bytes"] for s in sizes) / 1e6 / row["seconds"], 3)
        print(json.dumps(row), flush=True)
        rows.append(row)
    (args.out / "scaling.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
