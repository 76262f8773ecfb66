"""CPU time per stage per document, in one process: where our stage 1 spends its time.

    python bench/data_pipeline/stage_profile.py OUT/input_en/en_bench_000.jsonl.gz [--set key=value ...]

Runs the configured stages (configs/data_pipeline.yaml, ``--set`` overrides as
bench.py's) over every record of one file, timing each stage's ``process``
with ``time.process_time`` around it, then the dedup signing (exact hash,
shingles, signature, bands) and the Arrow table build, as ``clean_records``
does them. Process CPU time, so other load on the machine inflates it far
less than wall-clock time. What Ray adds on top (start-up, scheduling,
serialisation, the write) is the end-to-end time minus the sum of these.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import BENCH_DEFINITION, REPO, _parse, pipeline_config  # noqa: E402

sys.path.insert(0, str(REPO))


def profile(path: str, overrides: list[str], batch: int) -> dict:
    """{stage: cpu seconds} over the file, plus counts; stages built once, as a Ray worker caches them."""
    import pyarrow as pa
    from omegaconf import OmegaConf

    from data_pipeline import clean
    from data_pipeline.config import plain
    from data_pipeline.minhash import band_hashes, shingle_hashes, signatures
    from data_pipeline.stage1 import reader_rows
    from data_pipeline.stages import build_stages

    cfg = pipeline_config()
    cfg.input, cfg.output = path, "unused"
    for item in overrides:
        key, value = item.split("=", 1)
        OmegaConf.update(cfg, key, _parse(value), force_add=True)
    pcfg = plain(cfg)
    t = time.process_time()
    rows = list(reader_rows({"path": path, "key": "k", "source": "s"}, pcfg["read"]))
    cost: dict[str, float] = defaultdict(float)
    cost["read"] = time.process_time() - t
    t = time.process_time()
    stages = build_stages(pcfg)  # loads the models (cached per process after this)
    cost["build_stages (first: model load)"] = time.process_time() - t
    reached: dict[str, int] = defaultdict(int)
    mb = sum(len((r.get("text") or "").encode()) for r in rows) / 1e6
    schema = clean.stage1_schema()
    blank = clean.blank_row(schema)
    for start in range(0, len(rows), batch):
        t = time.process_time()
        stages = build_stages(pcfg)  # per batch, as clean_records does
        cost["build_stages (per batch)"] += time.process_time() - t
        out = []
        for rec in rows[start:start + batch]:
            row = dict(blank)
            row.update(file_key="k", id=rec.get("id"), doc_id="k:1", bands=[], signature=[])
            text = rec["text"]
            dropped = None
            for stage in stages:
                reached[stage.name] += 1
                t = time.process_time()
                text, dropped = stage.process(text, row)
                cost[stage.name] += time.process_time() - t
                if dropped:
                    break
            row.update(status="dropped" if dropped else "kept", text=text)
            if not dropped:
                t = time.process_time()
                key = text
                for stage in stages:
                    key = stage.dedup_text(key, row)
                row["_k"] = key
                row.update(exact_hash=0, n_chars=len(text), n_bytes=len(text.encode()))
                cost["dedup_text + exact hash"] += time.process_time() - t
            out.append(row)
        kept = [r for r in out if r["status"] == "kept"]
        t = time.process_time()
        sh = [shingle_hashes(r.pop("_k"), r["lang"], pcfg["dedup"]) for r in kept]
        cost["shingles"] += time.process_time() - t
        t = time.process_time()
        sigs = signatures(sh, int(pcfg["dedup"]["num_perm"]), int(pcfg["dedup"]["seed"]))
        cost["signature"] += time.process_time() - t
        t = time.process_time()
        bands = band_hashes(sigs, int(pcfg["dedup"]["bands"]), int(pcfg["dedup"]["rows"]))
        cost["bands"] += time.process_time() - t
        t = time.process_time()
        for r, b, s in zip(kept, bands, sigs):
            r["bands"], r["signature"] = b.tolist(), s.tolist()
        pa.Table.from_pylist(out, schema=schema)
        cost["arrow table"] += time.process_time() - t
    total = sum(v for k, v in cost.items() if "first" not in k)
    return {"file": path, "docs": len(rows), "mb": round(mb, 2), "total_cpu_s_per_mb": round(total / mb, 3),
            "cpu_ms_per_doc": {k: round(1000 * v / len(rows), 3) for k, v in cost.items()},
            "cpu_s_per_mb": {k: round(v / mb, 3) for k, v in cost.items()}, "reached": dict(reached)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file")
    parser.add_argument("--set", action="append", default=None, metavar="KEY=VALUE")
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    print(json.dumps(profile(args.file, list(BENCH_DEFINITION) if args.set is None else args.set, args.batch), indent=1))


if __name__ == "__main__":
    main()
