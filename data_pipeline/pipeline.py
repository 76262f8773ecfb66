"""The whole run: validate, stage 1 per file, global dedup, final write, report.

    run(cfg) -> summary dict

Steps and what survives an interruption:

1. ``stage1``  per input file, committed with ``_work/stage1/<file>/_SUCCESS``;
   a rerun skips committed files.
2. ``dedup``   global, on Ray tasks; writes the removal set to ``_work/dedup/``;
   always recomputed from the committed stage-1 files (the directory is
   recreated), so it is deterministic for a given input.
3. ``write``   shards/heldout rewritten from scratch with fixed names, then
   quarantine.jsonl, mixture.json, report.md and finally report.json, whose
   presence marks a finished run.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from data_pipeline.config import ConfigError, plain, validate
from data_pipeline.dedup import count_input_ids, find_duplicates, removal_dir, stage1_part_files
from data_pipeline.ray_session import OwnedSession, sweep_stale_session
from data_pipeline.readers import expand_inputs
from data_pipeline.report import build_report, summary_line, write_outputs
from data_pipeline.stage1 import run_stage1
from data_pipeline.writer import merge_tallies, write_part


def _connect_ray(cfg: Any, work: Path) -> OwnedSession | None:
    """Join ``ray.address`` or start a local Ray; the OwnedSession if we started it (and so stop it).

    A Ray this run starts is recorded and reaped (data_pipeline/ray_session.py), so a killed driver
    leaves no Ray process behind; what a killed earlier run on this output left is stopped first.
    """
    import ray

    if ray.is_initialized():
        return None
    kwargs: dict[str, Any] = {"configure_logging": True, "logging_level": "WARNING", "log_to_driver": False}
    if cfg.ray.address:
        ray.init(address=str(cfg.ray.address), **kwargs)
        return None
    sweep_stale_session(work)
    ray.init(num_cpus=int(cfg.ray.num_cpus), include_dashboard=False, **kwargs)
    return OwnedSession(work)


def _write_outputs_parallel(part_files: list[str], out: Path, work: Path, partitions: int, cfg: Any) -> list[dict]:
    import ray
    from tqdm import tqdm

    for split in ("shards", "heldout"):  # fully regenerated: no stale part can survive a rerun
        shutil.rmtree(out / split, ignore_errors=True)
        (out / split).mkdir(parents=True)
    task = ray.remote(write_part).options(num_cpus=1)
    heldout_cfg = {"fraction": float(cfg.heldout.fraction), "seed": int(cfg.heldout.seed)}
    removals = str(removal_dir(work))
    pending = [task.remote(i, p, str(out), removals, partitions, heldout_cfg) for i, p in enumerate(part_files)]
    order = {ref: i for i, ref in enumerate(pending)}
    results: list[Any] = [None] * len(pending)
    with tqdm(total=len(pending), desc="write shards", unit="part", disable=not cfg.ray.progress) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            results[order[done[0]]] = ray.get(done[0])
            bar.update(1)
    return results


def run(cfg: DictConfig) -> dict:
    """Run the pipeline described by ``cfg`` (configs/data_pipeline.yaml); return the summary."""
    started = time.time()
    validate(cfg)
    skipped: list[dict] = []
    files = expand_inputs(cfg.input, list(cfg.read.extensions), skipped, plain(cfg.read.get("sources") or {}))
    if not files:
        raise ConfigError(f"config key 'input': no file matches {cfg.input!r}")
    out = Path(str(cfg.output)).expanduser().resolve()
    work = out / "_work"
    work.mkdir(parents=True, exist_ok=True)
    report_path = out / "report.json"
    if report_path.exists():
        report_path.unlink()  # written last: its absence marks an unfinished run
    owned = _connect_ray(cfg, work)
    try:
        t0 = time.time()
        stage1_stats = run_stage1(files, cfg, work)
        t1 = time.time()
        part_files = stage1_part_files(work, [f.key for f in files])
        dedup_stats = find_duplicates(part_files, plain(cfg), work)
        input_ids = count_input_ids(part_files, plain(cfg))
        t2 = time.time()
        tally = merge_tallies(_write_outputs_parallel(part_files, out, work, dedup_stats["partitions"], cfg))
        t3 = time.time()
    finally:
        if owned is not None:
            import ray

            ray.shutdown()
            owned.close()
    run_info = {"files": [f.path for f in files], "skipped_files": sorted(skipped, key=lambda x: x["path"]),
                "input_ids": input_ids, "stage1": stage1_stats, "dedup": dedup_stats,
                "seconds": {"stage1": round(t1 - t0, 2), "dedup": round(t2 - t1, 2), "write": round(t3 - t2, 2),
                            "total": round(time.time() - started, 2)}}
    report = build_report(tally, run_info)
    write_outputs(out, report, tally, dict(cfg.mixture.weights))
    summary = {k: report[k] for k in ("input", "kept", "heldout", "dropped_total", "quarantined")}
    summary.update(output=str(out), seconds=report["seconds"], stage1=stage1_stats, dedup=dedup_stats,
                   dropped={f"{stage}/{reason}": e["count"] for stage, reasons in report["dropped"].items()
                            for reason, e in reasons.items()})
    print(summary_line(report), flush=True)
    return summary
