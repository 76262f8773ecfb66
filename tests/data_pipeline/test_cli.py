"""The CLI the demo orchestrator calls: a subprocess run on a small corpus."""

import json
import subprocess
import sys

import pytest

from .conftest import write_small_corpus


def test_cli_end_to_end(ray_cluster, tmp_path):
    """Joins the session's Ray cluster through ray.address (also what a cluster run does)."""
    write_small_corpus(tmp_path / "in", per_file=8)
    address = ray_cluster.get_runtime_context().gcs_address
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "data_pipeline", f"input={tmp_path}/in/*", f"output={out}",
                           "ray.progress=false", f"ray.address={address}", "+mixture.weights.poems=3"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "input 26 | kept" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["input"] == 26 and report["dropped"]["dedup"]["exact_duplicate"]["count"] == 1
    mix = json.loads((out / "mixture.json").read_text())["sources"]
    assert mix["poems"]["weight"] == pytest.approx(3 * mix["zh_small"]["weight"])
    assert (out / ".hydra_run").is_dir() and not (tmp_path / "outputs").exists()  # hydra does not litter the cwd
    assert sorted(p.name for p in (out / "shards").iterdir())[0] == "part-00000.parquet"
