"""Each config rule fails with a message that names the key, and a good config passes."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import pretrain.config.schema  # noqa: F401  registers pretrain_schema
from pretrain.config.validate import ConfigError, config_errors, validate
from tests.helpers.synthetic_data import make_indexed_dataset

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_indexed_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def manifest(data_dir):
    from pretrain.data import read_manifest

    return read_manifest(data_dir)


def cfg_with(data_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose("pretrain", overrides=[f"data.path={data_dir}", "model.vocab_size=512", *overrides])


def errors_for(data_dir, manifest, *overrides, world_size=None):
    return config_errors(cfg_with(data_dir, *overrides), world_size, manifest)


def test_default_config_is_valid(data_dir, manifest):
    validate(cfg_with(data_dir), None, manifest)
    validate(cfg_with(data_dir, "parallel=tp2pp2"), 4, manifest)


@pytest.mark.parametrize("overrides, world_size, key", [
    (["parallel=tp2", "model.num_attention_heads=3", "model.num_query_groups=3"], 2, "model.num_attention_heads"),
    (["parallel=tp2", "model.num_query_groups=1"], 2, "model.num_query_groups"),
    (["parallel=pp2", "model.num_layers=3"], 2, "model.num_layers"),
    (["parallel=pp2", "parallel.virtual_pipeline_model_parallel_size=4"], 2, "model.num_layers"),
    (["parallel.virtual_pipeline_model_parallel_size=2"], 1, "parallel.virtual_pipeline_model_parallel_size"),
    (["parallel=pp2", "parallel.virtual_pipeline_model_parallel_size=2", "train.global_batch_size=4",
      "train.micro_batch_size=4"], 2, "microbatches"),
    (["parallel=dp2", "train.global_batch_size=12", "train.micro_batch_size=4"], 2, "train.global_batch_size"),
    (["parallel=tp2"], 4, "WORLD_SIZE"),
    (["parallel.sequence_parallel=true"], 1, "parallel.sequence_parallel"),
    (["parallel=tp2", "model.seq_length=127"], 2, "model.seq_length"),
    (["parallel=tp2", "+model.padded_vocab_size=513"], 2, "model.padded_vocab_size"),
    (["+model.padded_vocab_size=256"], 1, "model.padded_vocab_size"),
    (["model.vocab_size=8000"], 1, "model.vocab_size"),
    (["train.lr_decay_style=linear"], 1, "train.lr_decay_style"),
    (["train.recompute=some"], 1, "train.recompute"),
    (["train.min_lr=1.0"], 1, "train.min_lr"),
    (["train.lr_warmup_iters=1000", "train.train_iters=10"], 1, "train.lr_warmup_iters"),
    (["backend=jax"], 1, "backend"),
    (["logging.wandb.mode=sometimes"], 1, "logging.wandb.mode"),
    (["data.weights={nope: 1.0}"], 1, "data.weights"),
])
def test_each_rule_names_its_key(data_dir, manifest, overrides, world_size, key):
    errors = errors_for(data_dir, manifest, *overrides, world_size=world_size)
    assert errors, f"{overrides} should be rejected"
    assert any(key in e for e in errors), errors


def test_missing_data_is_reported(tmp_path, manifest):
    assert any("data.path" in e for e in config_errors(cfg_with(tmp_path / "nowhere"), 1, None))
    broken = dict(manifest, train={"web": dict(manifest["train"]["web"], prefix=str(tmp_path / "gone"))})
    errors = config_errors(cfg_with(tmp_path), 1, broken)
    assert any("gone.bin" in e for e in errors), errors


def test_all_errors_are_reported_together(data_dir, manifest):
    with pytest.raises(ConfigError) as info:
        validate(cfg_with(data_dir, "parallel=tp2", "model.num_attention_heads=3", "train.recompute=x"), 3, manifest)
    assert len(info.value.errors) >= 3


# --- issue 22: rules megatron / torch would otherwise hit after the process groups start ---------

@pytest.mark.parametrize("overrides, expected", [
    # default warm-up 30 == decay length (train_iters): megatron's bare AssertionError
    (["train.train_iters=30"], "train.lr_warmup_iters=30 must be smaller than the decay length train.train_iters=30"),
    (["train.train_iters=100", "train.lr_decay_iters=30"], "train.lr_decay_iters=30"),
    (["train.lr_decay_iters=-5"], "train.lr_decay_iters=-5"),
    (["train.lr_warmup_iters=-1"], "train.lr_warmup_iters=-1"),
    (["train.lr=-1.0"], "train.lr=-1.0 must be > 0"),
    (["train.lr=0.0", "train.min_lr=0.0"], "train.lr=0.0 must be > 0"),
    (["train.min_lr=-0.1"], "train.min_lr=-0.1 must be >= 0"),
    (["train.lr_matrix=-1.0"], "train.lr_matrix=-1.0"),
    (["train.weight_decay=-0.1"], "train.weight_decay"),
    (["train.adam_beta2=1.0"], "train.adam_beta2"),
    (["train.clip_grad=-1.0"], "train.clip_grad"),
])
def test_lr_schedule_rules_name_the_key(data_dir, manifest, overrides, expected):
    errors = errors_for(data_dir, manifest, *overrides)
    assert any(expected in e for e in errors), errors


def test_negative_lr_and_min_lr_are_both_named_not_min_lr_exceeds_lr(data_dir, manifest):
    errors = errors_for(data_dir, manifest, "train.lr=-1.0", "train.min_lr=-2.0")
    assert any(e.startswith("train.lr=-1.0 must be > 0") for e in errors), errors
    assert any(e.startswith("train.min_lr=-2.0 must be >= 0") for e in errors), errors
    alone = errors_for(data_dir, manifest, "train.lr=-1.0")
    assert not any("exceeds" in e for e in alone), alone  # not "min_lr exceeds lr"


def test_seq_length_longer_than_a_training_source_is_refused(data_dir, manifest):
    smallest = min(int(e["tokens"]) for e in manifest["train"].values())
    errors = errors_for(data_dir, manifest, f"model.seq_length={smallest}", "train.eval_interval=0")
    assert any("model.seq_length" in e and "training source" in e for e in errors), errors
    errors = errors_for(data_dir, manifest, "model.seq_length=4000000")
    assert any("model.seq_length=4000000" in e and "training source 'web'" in e for e in errors), errors
    # a source the run does not read (weight 0) does not count
    ok = errors_for(data_dir, manifest, f"model.seq_length={smallest}", "train.eval_interval=0",
                    "data.weights={code: 0.0, web: 1.0}" if smallest == manifest["train"]["code"]["tokens"]
                    else "data.weights={web: 0.0, code: 1.0}")
    assert not any("training source" in e for e in ok), ok


def test_seq_length_longer_than_a_heldout_source_is_refused_when_the_heldout_loss_is_on(data_dir, manifest):
    errors = errors_for(data_dir, manifest, "model.seq_length=16384")
    heldout = [e for e in errors if "held-out source" in e]
    assert heldout and all("model.seq_length=16384" in e and "train.eval_interval" in e for e in heldout), errors
    # without the held-out loss (BPB scores each document in its own windows) it is accepted
    assert errors_for(data_dir, manifest, "model.seq_length=16384", "train.eval_interval=0") == []
    # shorter than every source, but 16 samples of 2048 tokens per evaluation are more than 7.8k tokens hold
    errors = errors_for(data_dir, manifest, "model.seq_length=2048")
    assert errors and all("train.eval_iters=2 x train.global_batch_size=8" in e for e in errors), errors


# --- issue 17: the trainer runs the planner's fit check and refuses what cannot fit --------------

def test_teleflm_52b_recipe_is_valid_at_896_gpus():
    """The one 52B recipe (configs/experiment/teleflm_52b.yaml) passes every rule, the fit check included."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("pretrain", overrides=["+experiment=teleflm_52b"])
    assert (cfg.parallel.tensor_model_parallel_size, cfg.parallel.pipeline_model_parallel_size,
            cfg.parallel.data_parallel_size, cfg.cluster.name) == (4, 2, 112, "a800")
    assert config_errors(cfg, 896, None, check_data=False) == []
    assert any("WORLD_SIZE" in e for e in config_errors(cfg, 8, None, check_data=False))


def test_a_plan_that_does_not_fit_the_cluster_gpu_is_refused_naming_keys(data_dir, manifest):
    errors = errors_for(data_dir, manifest, "model=52b", "cluster=a800", "model.seq_length=128")
    refusal = [e for e in errors if "pretrain.tools.fit_check refuses" in e]
    assert len(refusal) == 1, errors
    assert "does not fit" in refusal[0] and "cluster.gpu.memory_gb" in refusal[0]
    assert "parallel.tensor_model_parallel_size=" in refusal[0] and "parallel.pipeline_model_parallel_size=" in refusal[0]
    # the same layout with the 52B recipe's TP4 PP2 over 112 nodes fits
    assert errors_for(data_dir, manifest, "model=52b", "cluster=a800", "model.seq_length=128",
                      "parallel=teleflm_52b", "train.micro_batch_size=1", "train.global_batch_size=1344",
                      "train.bf16=true", "train.eval_interval=0",  # the tiny held-out set holds < 1344 samples
                      world_size=896) == []


def test_without_a_gpu_the_plan_is_informational(data_dir, manifest):
    from pretrain.tools.fit_check import has_cuda

    errors = errors_for(data_dir, manifest, "model=52b", "cluster=local", "model.seq_length=128")
    refused = any("pretrain.tools.fit_check refuses" in e for e in errors)
    # CPU host + cluster=local: nothing to check against. A CUDA host checks its real device (one GPU).
    assert refused is has_cuda(), errors


def test_python_m_pretrain_refuses_before_any_process_group(data_dir, tmp_path):
    """The real entry point: exits non-zero with the planner's message, launches nothing, writes no run."""
    import os
    import subprocess
    import sys
    import time

    repo = CONFIGS.parent
    run_dir = tmp_path / "run"
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pretrain", "model=52b", "parallel=single", "cluster=a800", f"data.path={data_dir}",
         "model.vocab_size=512", "model.seq_length=128", f"run_dir={run_dir}"],
        cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert done.returncode != 0
    assert "pretrain.tools.fit_check refuses this plan" in done.stderr, done.stderr
    assert "does not fit: 52b with TP1 PP1 DP1" in done.stderr
    assert "parallel.tensor_model_parallel_size=" in done.stderr
    assert "launching" not in done.stdout and "torch.distributed" not in done.stderr
    assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "checkpoints").exists()
    assert elapsed < 60, f"the refusal took {elapsed:.0f} s"


def _label_positions(gpt, j: int) -> list[tuple[int, int]]:
    """(document, offset) of every token sample ``j`` of a megatron GPTDataset predicts (its labels)."""
    idx = gpt.shuffle_index[j]
    (beg, beg_off), (end, end_off) = gpt.sample_index[idx], gpt.sample_index[idx + 1]
    lengths = gpt.dataset.sequence_lengths
    out = []
    for i in range(beg, end + 1):
        doc = int(gpt.document_index[i])
        first = beg_off + 1 if i == beg else 0
        last = end_off if i == end else lengths[doc] - 1
        out += [(doc, k) for k in range(int(first), int(last) + 1)]
    return out


def _tokens_predicted_twice(cfg, manifest, cache: Path) -> int:
    """Build the valid split exactly as the trainer does and count the tokens one evaluation predicts
    more than once (it reads samples 0 .. eval_iters * global_batch_size - 1)."""
    import torch.distributed as dist

    from pretrain.data import build_datasets

    cache.mkdir(parents=True)
    dist.init_process_group("gloo", init_method=f"file://{cache / 'pg'}", rank=0, world_size=1)
    try:
        valid = build_datasets(cfg, manifest, cache).valid
    finally:
        dist.destroy_process_group()
    seen: dict[tuple[int, int, int], int] = {}
    for idx in range(cfg.train.eval_iters * cfg.train.global_batch_size):
        source, j = int(valid.dataset_index[idx]), int(valid.dataset_sample_index[idx])
        for doc, offset in _label_positions(valid.datasets[source], j):
            seen[source, doc, offset] = seen.get((source, doc, offset), 0) + 1
    return sum(n - 1 for n in seen.values())


def test_the_heldout_loss_never_counts_a_token_twice(data_dir, manifest, tmp_path):
    """The rule is checked against the valid split megatron really builds: the most eval_iters it
    accepts reads every held-out token at most once; a config it refuses would read some twice."""
    accepted = [e for e in range(1, 12) if not errors_for(data_dir, manifest, f"train.eval_iters={e}")]
    assert accepted and accepted == list(range(1, accepted[-1] + 1)), accepted
    most = accepted[-1]
    refused = errors_for(data_dir, manifest, f"train.eval_iters={most + 1}")
    assert refused and all(f"lower train.eval_iters to {most} or less" in e for e in refused), refused

    assert _tokens_predicted_twice(cfg_with(data_dir, f"train.eval_iters={most}"), manifest, tmp_path / "a") == 0
    too_many = cfg_with(data_dir, f"train.eval_iters={3 * most}")
    assert errors_for(data_dir, manifest, f"train.eval_iters={3 * most}")
    assert _tokens_predicted_twice(too_many, manifest, tmp_path / "b") > 0  # what the rule prevents


def test_a_growth_source_that_is_not_a_checkpoint_is_refused_before_launch(data_dir, manifest, tmp_path):
    from pretrain.config.resolve import LATEST, RUN_CONFIG

    source = tmp_path / "small" / "checkpoints" / "iter_0000010"
    overrides = (f"run_dir={tmp_path / 'grown'}", f"growth={{source: '{source}', ramp_iters: 2}}")
    errors = errors_for(data_dir, manifest, *overrides)
    assert any(e.startswith(f"growth.source={source}: not a finalised trainer checkpoint") for e in errors), errors
    source.mkdir(parents=True)
    (source / RUN_CONFIG).write_text("model: {}\n")
    assert not any("growth.source" in e for e in errors_for(data_dir, manifest, *overrides))
    # a stage that has grown already resumes from its own checkpoints: the source is not read again
    (source / RUN_CONFIG).unlink()
    grown = tmp_path / "grown" / "checkpoints" / "iter_0000010"
    grown.mkdir(parents=True)
    (grown / RUN_CONFIG).write_text("model: {}\n")
    (grown.parent / LATEST).write_text(grown.name + "\n")
    assert not any("growth.source" in e for e in errors_for(data_dir, manifest, *overrides))
