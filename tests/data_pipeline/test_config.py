"""Bad configuration fails before any work, naming the key."""

import subprocess
import sys

import pytest

from data_pipeline.config import ConfigError, validate

from .conftest import REPO_ROOT, load_config


@pytest.mark.parametrize("key,value,named", [
    ("stages", ["normalize", "quality", "language"], "stages"),
    ("stages", ["normalize", "sparkle"], "stages"),
    ("dedup.bands", 100, "dedup.num_perm"),
    ("dedup.threshold", 1.5, "dedup.threshold"),
    ("dedup.threshold", {"default": 0.1, "zh": 1.5}, "dedup.threshold.zh"),
    ("heldout.fraction", 1.0, "heldout.fraction"),
    ("mixture.weights", {"en_docs": -1}, "mixture.weights.en_docs"),
    ("quality.zh.units", "bytes", "quality.zh.units"),
])
def test_bad_values_name_their_key(key, value, named):
    cfg = load_config(input="x", output="y", **{key: value})
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        validate(cfg)


def test_per_language_dedup_threshold_needs_a_default():
    cfg = load_config(input="x", output="y")
    cfg.dedup.threshold = {"zh": 0.2}  # assignment replaces the mapping (an update would merge into it)
    with pytest.raises(ConfigError, match=r"dedup\.threshold\.default"):
        validate(cfg)


def test_default_config_is_valid():
    validate(load_config(input="data/*.jsonl", output="/tmp/x"))


def test_cli_rejects_bad_config_quickly_with_the_key(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "data_pipeline", f"input={tmp_path}/*.jsonl",
                           f"output={tmp_path}/out", "dedup.threshold=2"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "dedup.threshold" in proc.stderr
