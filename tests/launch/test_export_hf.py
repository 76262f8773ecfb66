"""Hugging Face export and import against the real trainer model and real dist checkpoints.

One TP2 checkpoint (2 gloo ranks, pretrain.model.teleflm.build_model) is shared by the
tests. The exported directory is loaded by stock transformers with no custom
code; its FP32 logits are compared with the megatron model's own logits.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from safetensors.torch import load_file

from launch.weight_mapping import Shapes, merge_qkv, split_qkv
from tests.helpers.launch import skip_unless_ranks_fit

REPO_ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-4
WORKER_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

pytestmark = pytest.mark.timeout(600)


def run(*args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=WORKER_ENV, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


@pytest.fixture(scope="module")
def tp2_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("tp2_run")
    skip_unless_ranks_fit(2, cpu_only="checkpoint_worker.py builds its own gloo group")
    run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(REPO_ROOT / "tests/launch/checkpoint_worker.py"), str(run_dir))
    return run_dir


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory) -> Path:
    """A small BPE SentencePiece model with the tokenizer stage's settings (identity normalisation, byte fallback)."""
    out = tmp_path_factory.mktemp("spm")
    text = out / "text.txt"
    text.write_text("\n".join(f"the quick brown fox {i} jumps over the lazy dog; le renard {i * 7}" for i in range(300)))
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(out / "tokenizer"), vocab_size=320, model_type="bpe", byte_fallback=True,
        normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
        pad_id=0, bos_id=1, eos_id=2, unk_id=3, minloglevel=2)
    return out / "tokenizer.model"


@pytest.fixture(scope="module")
def exported(tp2_run, spm_model, tmp_path_factory) -> Path:
    hf_dir = tmp_path_factory.mktemp("hf")
    # A tiny shard size forces several shards and the index file, as a 52B export has.
    run("-m", "launch.export_hf", f"checkpoint={tp2_run / 'checkpoints'}", f"output={hf_dir}",
        "max_shard_size_gb=0.0005", f"tokenizer_model={spm_model}")
    return hf_dir


def test_qkv_split_follows_megatrons_grouped_layout():
    s = Shapes(num_layers=1, hidden_size=2, num_attention_heads=4, num_query_groups=2, head_dim=1,
               ffn_hidden_size=4, vocab_size=8, input_mult=1.0, logit_mult=1.0)
    # Rows: group 0 = [q0, q1, k0, v0], group 1 = [q2, q3, k1, v1]; row r holds the value r.
    qkv = torch.arange(8.0).unsqueeze(1).repeat(1, 2)
    q, k, v = split_qkv(qkv, s)
    assert q[:, 0].tolist() == [0, 1, 4, 5] and k[:, 0].tolist() == [2, 6] and v[:, 0].tolist() == [3, 7]
    assert torch.equal(merge_qkv(q, k, v, s), qkv)


def test_export_loads_in_stock_transformers_with_identical_logits(tp2_run, exported, spm_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    index = json.loads((exported / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((exported / s).exists() for s in shards)
    config = json.loads((exported / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert (config["vocab_size"], config["num_key_value_heads"], config["head_dim"]) == (1000, 2, 32)
    assert config["attention_bias"] is False and config["mlp_bias"] is False
    assert config["tie_word_embeddings"] is False and config["rms_norm_eps"] == 1e-5
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert (exported / "generation_config.json").exists()

    model = AutoModelForCausalLM.from_pretrained(str(exported), dtype=torch.float32).eval()  # no trust_remote_code
    assert type(model).__name__ == "LlamaForCausalLM"
    reference = torch.load(tp2_run / "reference_logits.pt")
    with torch.no_grad():
        logits = model(reference["tokens"]).logits
    megatron_logits = reference["logits"][..., :1000]        # real ids; rows 1000..1023 are padding
    max_abs_diff = (logits - megatron_logits).abs().max().item()
    print(f"\nexport parity: max |HF - megatron| logit = {max_abs_diff:.3e} "
          f"(logit scale {megatron_logits.abs().max().item():.3f})")
    assert max_abs_diff < TOLERANCE
    assert megatron_logits.std() > 0.05  # the comparison is not between near-zero tensors

    generated = model.generate(reference["tokens"][:1, :6], max_new_tokens=8, do_sample=False)
    assert generated.shape == (1, 14) and int(generated.max()) < 1000

    tokenizer = AutoTokenizer.from_pretrained(str(exported))
    text = "the quick brown fox 12 jumps"
    assert tokenizer(text)["input_ids"] == spm.SentencePieceProcessor(model_file=str(spm_model)).encode(text)
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id == 2


def test_import_at_tp2_then_export_round_trips_bit_exactly(exported, tmp_path):
    # The same multipliers as the original run (input 2, output 0.5, muP width 2): the import divides
    # them out of embed_tokens/lm_head, the next export folds them back in.
    run("-m", "launch.import_hf", f"hf_dir={exported}", f"output={tmp_path / 'run' / 'checkpoints'}",
        "parallel=tp2", "model=tiny", "model.input_mult=2.0", "model.output_mult=0.5",
        "model.mup.enabled=true", "model.mup.base_hidden_size=64")
    iter_dir = tmp_path / "run" / "checkpoints" / "iter_0000000"
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == "iter_0000000"
    assert (iter_dir / "metadata.json").exists() and (iter_dir / "run_config.yaml").exists()
    again = tmp_path / "hf_again"
    run("-m", "launch.export_hf", f"checkpoint={tmp_path / 'run'}", f"output={again}")

    def tensors(hf_dir: Path) -> dict[str, torch.Tensor]:
        out = {}
        for shard in sorted(hf_dir.glob("model-*.safetensors")):
            out.update(load_file(str(shard)))
        return out

    before, after = tensors(exported), tensors(again)
    assert sorted(before) == sorted(after) and len(before) == 2 * 9 + 3
    for name in before:
        assert before[name].dtype == after[name].dtype and torch.equal(before[name], after[name]), name
    drop = {"bos_token_id", "eos_token_id", "pad_token_id"}  # the second export was given no tokenizer
    config_before = {k: v for k, v in json.loads((exported / "config.json").read_text()).items() if k not in drop}
    config_after = {k: v for k, v in json.loads((again / "config.json").read_text()).items() if k not in drop}
    assert config_before == config_after


def _export_fails(checkpoint: Path, output: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "launch.export_hf", f"checkpoint={checkpoint}",
                             f"output={output}"], cwd=REPO_ROOT, env=WORKER_ENV, capture_output=True,
                            text=True, timeout=400)
    assert result.returncode != 0, "the export of a damaged checkpoint succeeded"
    return result


@pytest.mark.parametrize("damage", ["data_file", "metadata"])
def test_export_of_a_half_written_checkpoint_names_the_file_and_leaves_no_output(tp2_run, tmp_path, damage):
    """A checkpoint whose largest data file (or DCP .metadata) was cut short, as a save killed
    mid-write leaves it: the error names the file, and neither the output directory nor the
    staging directory next to it is left behind."""
    source = tp2_run / "checkpoints" / (tp2_run / "checkpoints" / "latest").read_text().strip()
    damaged = tmp_path / "iter_damaged"
    shutil.copytree(source, damaged)
    if damage == "data_file":
        victim = max(damaged.glob("*.distcp"), key=lambda p: p.stat().st_size)
    else:
        victim = damaged / ".metadata"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    output = tmp_path / "hf"
    result = _export_fails(damaged, output)
    assert str(victim) in result.stderr, result.stderr[-3000:]
    assert not output.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["iter_damaged"]  # no staging directory left
