"""bench/gpu/throughput.py's torchtitan rows, without a GPU and without torchtitan.

The benchmark itself only runs on a GPU machine (bench/gpu/run.sh); what can be checked
anywhere is the bookkeeping around it: the ours/torchtitan ratio, the docs row of a
failed torchtitan run, and that a failing torchtitan subprocess becomes such a row
instead of losing our measurements.
"""

from __future__ import annotations

import importlib.util
import sys

from tests.helpers.launch import REPO_ROOT


def load_throughput():
    spec = importlib.util.spec_from_file_location("bench_gpu_throughput", REPO_ROOT / "bench" / "gpu" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def row(name: str, tokens_per_s: float | None, **extra) -> dict:
    return {"name": name, "tokens_per_s": tokens_per_s, "tflops_per_gpu": 400.0 if tokens_per_s else None,
            "mfu": 0.4 if tokens_per_s else None, **extra}


def test_ratio_is_ours_over_the_faster_torchtitan_row_bf16_only():
    throughput = load_throughput()
    results = [row("1b_seq4096_bf16_te", 55_000.0), row("1b_seq4096_fp8_hybrid", 80_000.0),
               row("torchtitan_1b_seq4096_bf16", 40_000.0), row("torchtitan_1b_seq4096_bf16_sdpa", 50_000.0),
               row("torchtitan_broken", None, error="rc 1: boom")]
    throughput.torchtitan_ratios(results)
    assert results[0]["vs_torchtitan"] == 55_000.0 / 50_000.0
    assert "vs_torchtitan" not in results[1]          # FP8 against BF16 is not like for like
    assert all("vs_torchtitan" not in r for r in results[2:])


def test_docs_rows_carry_ratio_versions_and_failures(tmp_path):
    throughput = load_throughput()
    results = [row("1b_seq4096_bf16_te", 55_000.0, vs_torchtitan=1.1),
               row("torchtitan_1b_seq4096_bf16", None, error="rc 1: boom")]
    facts = {"device": "NVIDIA H200", "torch": "2.13.0", "transformer_engine": "2.9", "torchtitan": "0.3.0"}
    docs = tmp_path / "benchmarks.md"
    throughput.append_docs(docs, results, facts)
    lines = docs.read_text().splitlines()
    assert "| date | device | torch / TE / torchtitan | run | tokens/s | TFLOP/s per GPU | MFU | vs torchtitan |" in lines
    ours = next(line for line in lines if "| 1b_seq4096_bf16_te |" in line)
    assert "| 2.13.0 / 2.9 / 0.3.0 |" in ours and ours.endswith("| 55000 | 400 | 40.0% | 1.10x |")
    failed = next(line for line in lines if "| torchtitan_1b_seq4096_bf16 |" in line)
    assert "failed (bench/gpu/results.json)" in failed


def test_failing_torchtitan_run_becomes_an_error_row(tmp_path):
    throughput = load_throughput()
    result = throughput.measure_torchtitan("torchtitan_missing_model", tmp_path, None,
                                           ["--model", "no_such_model", "--check-only"])
    assert result["tokens_per_s"] is None and result["error"].startswith("rc ")
    assert "no_such_model" in result["error"]
