"""The typed trainer config (pretrain/config/schema.py): wrong types and unknown keys fail
naming the key, and the schema's defaults agree with configs/pretrain.yaml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from pretrain.config.schema import ModelConfig, PretrainConfig, TrainConfig, typed, typed_model

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "configs"


def compose_pretrain(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose("pretrain", overrides=list(overrides))


def error_text(err: BaseException) -> str:
    """An exception and its causes, as Hydra prints them."""
    parts = []
    while err is not None:
        parts.append(str(err))
        err = err.__cause__ or err.__context__
    return "\n".join(parts)


def test_composed_config_is_typed():
    cfg = compose_pretrain("train.micro_batch_size=2", "data.train_samples=64")
    assert OmegaConf.get_type(cfg) is PretrainConfig
    assert OmegaConf.get_type(cfg.train) is TrainConfig and OmegaConf.get_type(cfg.model) is ModelConfig
    assert cfg.train.micro_batch_size == 2 and isinstance(cfg.train.lr, float)
    assert cfg.data.train_samples == 64 and cfg.growth is None


@pytest.mark.parametrize("override, key", [
    ("train.micro_batch_size=abc", "train.micro_batch_size"),
    ("train.bf16=maybe", "train.bf16"),
    ("model.num_layers=1.5", "model.num_layers"),
    ("train.spikes.loss_sigma=high", "train.spikes.loss_sigma"),
])
def test_wrong_type_fails_naming_the_key(override, key):
    with pytest.raises(ConfigCompositionException) as err:
        compose_pretrain(override)
    assert key in error_text(err.value)


@pytest.mark.parametrize("override, key", [
    ("train.micro_bach_size=4", "train.micro_bach_size"),
    ("checkpoint.save_intervall=4", "checkpoint.save_intervall"),
    ("model.mup.enable=true", "model.mup.enable"),
])
def test_unknown_key_fails_naming_it(override, key):
    with pytest.raises(ConfigCompositionException) as err:
        compose_pretrain(override)
    assert key in error_text(err.value)


@pytest.mark.parametrize("argv, key", [
    (["train.micro_batch_size=abc"], "train.micro_batch_size"),
    (["train.micro_bach_size=4"], "train.micro_bach_size"),
])
def test_cli_fails_naming_the_key(tmp_path, argv, key):
    result = subprocess.run([sys.executable, "-m", "pretrain", f"run_dir={tmp_path}", *argv],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert key in result.stdout + result.stderr


def test_schema_defaults_match_pretrain_yaml():
    """The schema's defaults (what a hand-built, partial config gets) are pretrain.yaml's."""
    composed = OmegaConf.to_container(compose_pretrain(), resolve=True)
    schema = OmegaConf.to_container(OmegaConf.structured(PretrainConfig))
    for block in ("data", "train", "checkpoint", "deepspeed", "logging"):
        assert schema[block] == composed[block], block
    assert schema["run_dir"] == composed["run_dir"] and schema["backend"] == composed["backend"]


def test_experiments_and_presets_compose():
    for overrides in (["+experiment=mup_coord_check"], ["+experiment=mup_sweep"],
                      ["model=52b", "parallel=teleflm_52b", "cluster=a800"],
                      ["model=1t", "parallel=teleflm_1t", "cluster=h100"], ["cluster=slurm_ci", "model=mup_w512"]):
        cfg = compose_pretrain(*overrides)
        assert OmegaConf.get_type(cfg) is PretrainConfig


def test_typed_fills_a_partial_config_and_keeps_extra_keys_when_lenient():
    cfg = typed({"train": {"seed": 7}, "model": {"hidden_size": 64}}, strict=False)
    assert cfg.train.seed == 7 and cfg.train.lr == 3.0e-3 and cfg.model.rotary_base == 10000
    assert typed_model({"hidden_size": 64, "use_mup": False}).use_mup is False
    with pytest.raises(Exception, match="train.micro_batch_size"):
        typed({"train": {"micro_batch_size": "abc"}})
