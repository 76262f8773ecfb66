"""The whole pipeline end to end (`make demo`) on a small slice of the embedded corpus.

Runs the demo orchestrator as a user would (every stage through its own CLI:
data_pipeline on a real local Ray, tokenizer, pretrain in 2 gloo processes with
a stop and a resume, HF export, generation with stock transformers), then
checks what a user would look at, and that the trainer's held-out bits per byte
equal those of the exported Hugging Face model on the same text.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS_PER_SOURCE = 40  # 81 planted records (4 exact, 5 near duplicates) still come along


def make_slice(out: Path) -> tuple[Path, Path]:
    """The first records of each corpus file plus the planted junk that belongs with them.

    Planted records sort after the originals, so a plain head of each file would
    contain none: take every junk record that needs no original, and the exact
    and near duplicates whose original is in the slice, with their ground truth.
    """
    out.mkdir(parents=True)
    planted = {row["id"]: row for row in map(json.loads,
               (REPO / "data" / "corpus" / "planted.jsonl").read_text().splitlines())}
    files: dict[str, list[tuple[str, str]]] = {}
    for path in sorted((REPO / "data" / "corpus").glob("*.jsonl.gz")):
        rows = []
        for line in gzip.decompress(path.read_bytes()).decode("utf-8").splitlines():
            try:
                rows.append((json.loads(line)["id"], line))
            except (json.JSONDecodeError, KeyError):
                rows.append(("", line))  # malformed lines stay: the pipeline must quarantine them
        files[path.name] = rows
    originals = {rid for rows in files.values() for rid, _ in
                 [r for r in rows if r[0] and r[0] not in planted][:DOCS_PER_SOURCE]}
    selected_planted = {rid for rid, row in planted.items()
                        if row.get("of") in originals or ("of" not in row and row["kind"] != "malformed")}
    for name, rows in files.items():
        lines = [line for rid, line in rows if not rid or rid in originals or rid in selected_planted]
        (out / name).write_bytes(gzip.compress(("\n".join(lines) + "\n").encode("utf-8")))
    (out / "planted.jsonl").write_text("".join(json.dumps(planted[rid]) + "\n" for rid in sorted(selected_planted)))
    return out / "*.jsonl.gz", out / "planted.jsonl"


@pytest.mark.slow
def test_demo_end_to_end_on_a_slice(tmp_path):
    corpus, ground_truth = make_slice(tmp_path / "corpus")
    run_dir = tmp_path / "run"
    overrides = [
        f"run_dir={run_dir}", f"corpus={corpus}", f"ground_truth={ground_truth}",
        "tokenizer.overrides=['tokenizer=demo','tokenizer.vocab_size=4000','tokenizer.training.character_coverage=0.995']",
        "pretrain.first_iters=15", "pretrain.train_iters=30", "pretrain.save_interval=15", "min_loss_drop=0.5",
        "pretrain.overrides=['train.lr_warmup_iters=5','train.eval_interval=0']",
        "generate.max_new_tokens=8",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline")
    proc = subprocess.run([sys.executable, "-m", "launch.demo", *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    summary = json.loads((run_dir / "demo_summary.json").read_text())
    assert summary["first_loss"] - summary["last_loss"] > 0.5, summary
    # exact duplicates and all junk kinds; near duplicates at 20-30% edits may survive (documented)
    assert summary["planted"] >= 40 and summary["planted_removed"] / summary["planted"] > 0.75, summary
    assert len(summary["samples"]) == 2 and all(sample.strip() for sample in summary["samples"])
    for key in ("data report", "tokenizer", "indexed datasets", "training metrics", "loss curve",
                "Hugging Face model"):
        assert Path(summary["paths"][key]).exists(), key
    assert "resumed from" in (run_dir / "logs" / "pretrain (resumed).log").read_text()

    # every optimizer step logged once, across the stop and the resume
    rows = [json.loads(line) for line in (run_dir / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in rows if "event" not in row]
    assert steps == list(range(1, 31))
    assert all({"step", "loss", "grad_norm", "lr", "tokens_per_s"} <= set(row) for row in rows if "event" not in row)

    # held-out BPB: trainer (megatron, TP2) == exported HF model on the same documents
    heldout = summary["heldout"]
    assert heldout and heldout["by_lang"], "the trainer reported no held-out evaluation"
    from pretrain.eval.hf_bpb import evaluate_hf_model

    groups = evaluate_hf_model(str(run_dir / "hf"), str(run_dir / "data" / "heldout"), max_len=None, batch_size=8)
    for lang, row in heldout["by_lang"].items():
        hf = groups["lang"][lang]
        assert hf.tokens == row["tokens"], lang
        assert hf.bits_per_byte == pytest.approx(row["bpb"], rel=1e-4), lang
