"""A/B of stage-1 Ray Data layouts on the same corpus: the committed one-task-per-file layout vs the alternatives.

    python bench/data_pipeline/stage1_layouts.py --mb 32 --files 16 --out /tmp/dp_layouts

Each layout replaces ``data_pipeline.stage1.run_group`` for one full
``data_pipeline.pipeline.run`` (fresh local Ray each time) on an en corpus
from bench.py's generator; everything else (dedup, write, report) is the
committed code. Prints wall seconds and the run's own stage-1 seconds per
layout. The layouts:

- ``three_operators``: a read ``flat_map`` (0.1 CPU), a cleaning
  ``map_batches`` (1 CPU) and the write (0.1 CPU), as stage 1 was until
  2026-11-23;
- ``three_operators_zero_io``: the same with reads and writes at 0 CPU;
- ``actor_pool``: the read operator, then a pool of cleaning actors, one per CPU;
- ``one_cpu_operators``: the same three operators, all at 1 CPU (Ray then fuses cleaning and write);
- ``per_file``: the committed layout (stage1.run_group).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import BENCH_DEFINITION, REPO, generate, run_ours  # noqa: E402

sys.path.insert(0, str(REPO))


def _split_layout(io_cpus: float, actors: bool = False):
    """A run_group that reads with one operator and cleans with another, as before 2026-11-23."""
    from data_pipeline import stage1

    def run_group(files, cfg, work):
        import ray.data

        from data_pipeline.clean import clean_records
        from data_pipeline.config import plain

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        plain_cfg = plain(cfg)
        staging = work / "staging-layout"
        items = [{"path": f.path, "key": f.key, "source": f.source} for f in files]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.flat_map(lambda item: list(stage1.reader_rows(item, plain_cfg.read)), num_cpus=io_cpus)
        if actors:
            class Cleaner:
                def __call__(self, batch):
                    return clean_records(batch.to_pylist(), plain_cfg)

            ds = ds.map_batches(Cleaner, batch_size=int(cfg.ray.batch_size), batch_format="pyarrow",
                                num_cpus=0.9, concurrency=int(cfg.ray.num_cpus))
        else:
            ds = ds.map_batches(lambda batch: clean_records(batch.to_pylist(), plain_cfg),
                                batch_size=int(cfg.ray.batch_size), batch_format="pyarrow", num_cpus=1)
        ds.write_parquet(str(staging), partition_cols=["file_key"],
                         ray_remote_args={"num_cpus": io_cpus})
        for f in files:
            target = stage1.stage1_dir(work, f.key)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / f"file_key={f.key}", target)
            (target / stage1.SUCCESS).write_text(f.path + "\n")

    return run_group


def layouts() -> dict:
    from data_pipeline import stage1

    return {"three_operators": _split_layout(0.1), "three_operators_zero_io": _split_layout(0.0),
            "actor_pool": _split_layout(0.01, actors=True), "one_cpu_operators": _split_layout(1.0),
            "per_file": stage1.run_group}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=32.0)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("/tmp/dp_layouts"))
    parser.add_argument("--only", default=None, help="comma-separated layout names")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from data_pipeline import stage1

    data = args.out / "input_en"
    if not data.exists():
        generate(data, "en", args.mb, 0.1, args.files, seed=7)
    results = {}
    for name, run_group in layouts().items():
        if args.only and name not in args.only.split(","):
            continue
        stage1.run_group = run_group
        start = time.time()
        res = run_ours(data, args.out / f"out_{name}", "en", list(BENCH_DEFINITION))
        results[name] = {"wall_s": round(time.time() - start, 1), "stage1_s": res["summary"]["seconds"]["stage1"],
                         "removed_by_dedup": len(res["removed"])}
        print(json.dumps({name: results[name]}), flush=True)
    (args.out / "layouts.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
