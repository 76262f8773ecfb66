"""`python -m tokenizer` end to end as the Makefile and the demo call it."""

from __future__ import annotations

import json
import os
import subprocess
import sys


TEST_OVERRIDES = ["tokenizer.vocab_size=3000", "tokenizer.sample.bytes=300000", "tokenizer.training.num_threads=1",
                  "tokenizer.training.character_coverage=0.995", "tokenizer.evaluate.max_bytes_per_lang=30000",
                  "tokenizer.evaluate.references=[mistral_v1,utf8_bytes]"]


def run_cli(repo_root, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="0")
    return subprocess.run([sys.executable, "-m", "tokenizer", *args], cwd=repo_root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_trains_exports_and_evaluates(repo_root, data_dir, tmp_path):
    out = tmp_path / "tok"
    done = run_cli(repo_root, f"input={data_dir}", f"output={out}", "steps=[train,evaluate]", *TEST_OVERRIDES)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "== tokenizer stage" in done.stdout and "tokens/byte" in done.stdout
    for name in ("tokenizer.model", "tokenizer.vocab", "hf/tokenizer.json", "eval/eval.json", "eval/eval.png"):
        assert (out / name).is_file(), name
    assert set(json.loads((out / "eval" / "eval.json").read_text())["tokenizers"]) == {"ours", "mistral_v1",
                                                                                         "utf8_bytes"}
    assert list((out / "hydra").iterdir()), "hydra's run directory belongs inside TOK_DIR"
    assert not (repo_root / "outputs").exists() or not any((repo_root / "outputs").rglob(str(out.name)))


def test_cli_rejects_bad_config_before_work(repo_root, data_dir, tmp_path):
    out = tmp_path / "tok"
    done = run_cli(repo_root, f"input={data_dir}", f"output={out}", "tokenizer.vocab_size=200")
    assert done.returncode != 0
    assert "tokenizer.vocab_size=200" in done.stderr
    assert not (out / "train").exists()
    missing = run_cli(repo_root, f"input={tmp_path / 'nowhere'}", f"output={out}")
    assert missing.returncode != 0 and "nowhere" in missing.stderr
