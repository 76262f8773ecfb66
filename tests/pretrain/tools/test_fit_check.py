"""The planner: activation formulas against the paper, the Tele-FLM preset, refusals and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pretrain.tools.flops import mfu
from pretrain.tools.memory import (
    GIB,
    BlockShape,
    in_flight_layer_activations,
    layer_activation_bytes,
    layer_activation_terms,
)
from pretrain.model.fast_path import Machine, choose_fast_path
from pretrain.tools.fit_check import CALIBRATION_KEYS, Assumptions, PlanRefused, format_plan, plan, require_fit

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "configs"


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose(config_name="plan", overrides=list(overrides))


# ---------------------------------------------------------------- activation formulas

def gpt_shape(s: int = 2048, b: int = 2, h: int = 1024, a: int = 16) -> BlockShape:
    """Korthikanti et al.'s block: 4h GeLU MLP, dropout on, LayerNorm, no GQA."""
    return BlockShape(seq_length=s, micro_batch=b, hidden=h, heads=a, q_width=h, kv_width=h, ffn=4 * h,
                      swiglu=False, hidden_dropout=0.1, attention_dropout=0.1)


def test_reproduces_korthikanti_34_plus_5as_over_h() -> None:
    shape = gpt_shape()
    s, b, h, a = 2048, 2, 1024, 16
    expected = s * b * h * (34 + 5 * a * s / h)
    assert layer_activation_bytes(shape, 1, False, "none", flash_attention=False) == expected
    # TP without SP: 10 replicated + 24/t sharded + 5as/(ht) (the paper's eq. 2).
    t = 4
    assert layer_activation_bytes(shape, t, False, "none", False) == s * b * h * (10 + 24 / t + 5 * a * s / (h * t))
    # TP + SP: everything divided by t; selective drops the score term; full keeps 2sbh/t.
    assert layer_activation_bytes(shape, t, True, "none", False) == expected / t
    assert layer_activation_bytes(shape, t, True, "selective", False) == s * b * h * 34 / t
    assert layer_activation_bytes(shape, t, True, "full", False) == 2 * s * b * h / t


def test_tele_flm_block_is_16_plus_6f_over_h_with_flash() -> None:
    s, b, h, f, a = 4096, 1, 8192, 21824, 64
    shape = BlockShape(seq_length=s, micro_batch=b, hidden=h, heads=a, q_width=h, kv_width=h, ffn=f)
    terms = layer_activation_terms(shape, flash_attention=True)
    assert terms.replicated + terms.sharded == s * b * h * (16 + 6 * f / h)
    assert terms.scores == 4 * a * s * b                      # fp32 log-sum-exp only
    no_flash = layer_activation_terms(shape, flash_attention=False)
    assert no_flash.scores == 2 * a * s * s * b               # softmax output, no dropout
    unfused = BlockShape(seq_length=s, micro_batch=b, hidden=h, heads=a, q_width=h, kv_width=h, ffn=f,
                         fused_swiglu=False)
    terms = layer_activation_terms(unfused, flash_attention=True)
    assert terms.replicated + terms.sharded == s * b * h * (16 + 8 * f / h)


def test_unfused_swiglu_count_matches_autograd() -> None:
    """What eager chunk + silu * up really saves, counted by storage with saved_tensors_hooks."""
    import torch
    import torch.nn.functional as F

    s, b, f = 64, 2, 96
    fc1_out = torch.randn(s, b, 2 * f, dtype=torch.bfloat16, requires_grad=True)
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        gate, up = torch.chunk(fc1_out, 2, dim=-1)
        F.silu(gate) * up
    # 6sbf bytes here; the formula's 8sbf adds the product, saved as the next matmul's input.
    assert sum(storages.values()) == 6 * s * b * f


def test_gqa_shrinks_only_k_and_v() -> None:
    mha = BlockShape(seq_length=128, micro_batch=1, hidden=256, heads=8, q_width=256, kv_width=256, ffn=512)
    gqa = BlockShape(seq_length=128, micro_batch=1, hidden=256, heads=8, q_width=256, kv_width=64, ffn=512)
    saved = layer_activation_terms(mha, True).sharded - layer_activation_terms(gqa, True).sharded
    assert saved == 2 * (2 * 128 * (256 - 64))


def test_in_flight_micro_batches_1f1b_and_interleaved() -> None:
    assert in_flight_layer_activations(0, 64, 2, 1, micro_batches=12) == 64     # first stage: p x L/p
    assert in_flight_layer_activations(1, 64, 2, 1, micro_batches=12) == 32     # last stage: 1 micro-batch
    assert in_flight_layer_activations(0, 64, 8, 1, micro_batches=2) == 16      # fewer micro-batches than stages
    assert in_flight_layer_activations(0, 64, 4, 2, micro_batches=16) == 64 * (1 + 3 / 8)


# ---------------------------------------------------------------- the Tele-FLM preset

def test_tele_flm_preset_fits_on_a800() -> None:
    result = plan(composed())
    assert result.layout.describe() == "TP4 PP2 DP112 +SP = 896 GPUs"
    assert result.padded_vocab == 80384
    assert result.capacity_gib == 80
    assert result.fits is True and result.refusal is None
    assert 40 < result.peak_gib < 80
    first, last = result.stages
    assert first.in_flight == 64 and last.in_flight == 32
    assert last.logits > 0 and first.logits == 0
    # Distributed optimizer: 12 bytes per parameter spread over DP112.
    assert first.optimizer == pytest.approx(12 * first.parameters / 112)
    assert first.gradients == 2 * first.weights


def test_step_time_arithmetic_is_consistent() -> None:
    result = plan(composed())
    step = result.step
    assert step.micro_batches == 1344 // 112
    assert step.bubble_fraction == pytest.approx(1 / 13)
    assert step.step >= step.pipeline
    assert step.mfu == pytest.approx(mfu(step.tokens_per_s_per_gpu, result.flops_per_token, 312.0))
    assert 0.2 < step.mfu < result.assumptions.matmul_efficiency
    # More efficient matmuls can only shorten the step.
    faster = plan(composed("plan.matmul_efficiency=0.7"))
    assert faster.step.step < step.step


def test_plain_optimizer_keeps_full_state() -> None:
    distributed = plan(composed()).stages[0]
    plain = plan(composed("parallel.use_distributed_optimizer=false")).stages[0]
    assert plain.optimizer == pytest.approx(distributed.optimizer * 112)


def test_calibration_defaults_match_plan_yaml() -> None:
    yaml = OmegaConf.load(CONFIGS / "plan.yaml")
    defaults = asdict(Assumptions())
    assert OmegaConf.to_container(yaml.plan) == {k: defaults[k] for k in CALIBRATION_KEYS}


# ---------------------------------------------------------------- one recipe: the trainer's keys

def test_plan_yaml_holds_no_copy_of_trainer_keys() -> None:
    """Only the composition, the calibration block and Hydra's own settings: no train:/assumptions:."""
    yaml = OmegaConf.load(CONFIGS / "plan.yaml")
    assert set(yaml.keys()) == {"defaults", "plan", "hydra"}
    assert "pretrain" in yaml.defaults and {"experiment": "teleflm_52b"} in yaml.defaults


def test_planner_and_trainer_read_the_same_52b_recipe() -> None:
    from pretrain.config.schema import PretrainConfig

    planner = composed()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        trainer = compose(config_name="pretrain", overrides=["+experiment=teleflm_52b"])
    assert OmegaConf.get_type(planner) is PretrainConfig     # typed by the trainer's schema
    for block in ("model", "parallel", "cluster", "train", "backend", "deepspeed"):
        assert planner[block] == trainer[block], block
    assert (planner.train.global_batch_size, planner.train.micro_batch_size, planner.train.bf16) == (1344, 1, True)


def a800() -> Machine:
    return Machine(cuda=True, transformer_engine=True, compute_capability=(8, 0))


def test_assumptions_are_the_trainers_fast_path_on_the_cluster_gpu() -> None:
    cfg = composed()
    result = plan(cfg)
    expected = choose_fast_path(cfg, a800())
    assert result.fast_path == expected
    assert result.assumptions.overlap_grad_reduce is expected.overlap_grad_reduce is True
    assert result.assumptions.overlap_param_gather is expected.overlap_param_gather is True
    assert result.assumptions.grad_reduce_in_bf16 is False
    assert result.assumptions.fused_swiglu is expected.fusions["bias_activation_fusion"] is True
    assert "spec=transformer_engine" in format_plan(result)


def test_trainer_keys_change_the_plan() -> None:
    base = plan(composed())
    unfused = plan(composed("train.gpu.fusions=false"))
    # bias_activation_fusion off: SwiGLU also keeps SiLU(gate), 2 bytes x s x b x ffn/t per layer.
    assert unfused.assumptions.fused_swiglu is False
    extra = 2 * 4096 * 1 * 21824 / 4
    assert unfused.activation_per_layer["none"] - base.activation_per_layer["none"] == pytest.approx(extra)
    bf16 = plan(composed("train.gpu.grad_reduce_dtype=bf16"))
    assert bf16.assumptions.grad_reduce_in_bf16 is True
    assert bf16.step.dp_comm_total < base.step.dp_comm_total
    no_overlap = plan(composed("train.overlap_param_gather=false", "train.overlap_grad_reduce=false"))
    assert no_overlap.assumptions.overlap_param_gather is False
    assert no_overlap.step.dp_comm_exposed == pytest.approx(no_overlap.step.dp_comm_total)
    assert no_overlap.step.step > base.step.step


def test_fp32_training_is_planned_with_fp32_weights_and_activations() -> None:
    """train.bf16=false (the trainer's default, for CPU runs): fp32 weights are the master copy."""
    bf16 = plan(composed()).stages[0]
    fp32 = plan(composed("train.bf16=false")).stages[0]
    assert fp32.weights == pytest.approx(2 * bf16.weights)
    assert fp32.optimizer == pytest.approx(bf16.optimizer * 8 / 12)
    assert fp32.gradients == bf16.gradients
    assert fp32.activations == pytest.approx(2 * bf16.activations)
    assert "fp32 (train.bf16=false)" in format_plan(plan(composed("train.bf16=false")))


def test_compute_capability_comes_from_the_cluster_preset() -> None:
    with pytest.raises(PlanRefused, match="train.gpu.fp8"):
        plan(composed("train.gpu.fp8=hybrid"))                       # A800: compute capability 8.0
    h100 = plan(composed("cluster=h100", "cluster.nodes=112", "train.gpu.fp8=hybrid"))
    assert h100.fast_path.fp8 == "hybrid" and h100.fits is True


# ---------------------------------------------------------------- refusals

def test_oversized_single_node_is_refused_naming_tp_pp() -> None:
    cfg = composed("parallel=single", "parallel.data_parallel_size=8")
    result = plan(cfg)
    assert result.fits is False
    assert result.peak_gib > 80
    assert "parallel.tensor_model_parallel_size" in result.refusal
    assert "parallel.pipeline_model_parallel_size" in result.refusal
    with pytest.raises(PlanRefused, match="cluster.gpu.memory_gb"):
        require_fit(cfg)


def test_1t_growth_target_needs_full_recompute() -> None:
    refused = plan(composed("model=1t", "parallel=teleflm_1t"))
    assert refused.fits is False
    assert "train.recompute=full" in refused.refusal
    fitted = plan(composed("model=1t", "parallel=teleflm_1t", "train.recompute=full"))
    assert fitted.fits is True
    assert fitted.parameters["total"] == pytest.approx(1.08e12, rel=0.01)
    assert fitted.layout.world == 896


def test_invalid_tp_is_refused() -> None:
    result = plan(composed("parallel.tensor_model_parallel_size=3", "parallel.data_parallel_size=1"))
    assert result.fits is False
    assert "parallel.tensor_model_parallel_size=3 must divide model.num_attention_heads=64" in result.refusal


def test_no_gpu_is_informational() -> None:
    result = plan(composed("model=tiny", "parallel=tp2", "cluster=local", "train.global_batch_size=8"))
    assert result.capacity_gib is None or result.gpu_name is not None
    if result.gpu_name is None:   # CPU machine: nothing to refuse against
        assert result.fits is None and result.refusal is None and result.step is None
    assert "only stage" in format_plan(result)


# ---------------------------------------------------------------- the CLI

def run_cli(*overrides: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "pretrain.tools.fit_check", *overrides], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_prints_the_tele_flm_table(tmp_path: Path) -> None:
    done = run_cli("model=52b", "parallel=teleflm_52b", "cluster=a800", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "FITS" in done.stdout and "MFU" in done.stdout
    assert list(tmp_path.iterdir()) == []      # a planner leaves no Hydra output directories behind


def test_cli_refuses_oversized_config() -> None:
    done = run_cli("model=52b", "parallel=single", "parallel.data_parallel_size=8", "cluster=a800")
    assert done.returncode == 2
    assert "does not fit" in done.stderr
    assert "parallel.tensor_model_parallel_size" in done.stderr


def test_zero_stages_shard_progressively() -> None:
    base = ("parallel.tensor_model_parallel_size=1", "parallel.pipeline_model_parallel_size=1",
            "parallel.data_parallel_size=448", "parallel.sequence_parallel=false", "train.recompute=full")
    stages = {z: plan(composed(*base, "backend=deepspeed", f"deepspeed.zero_stage={z}")).stages[0] for z in (1, 2, 3)}
    assert stages[1].gradients == pytest.approx(448 * stages[2].gradients)
    assert stages[2].weights == pytest.approx(448 * stages[3].weights)
    assert stages[1].optimizer == stages[2].optimizer == stages[3].optimizer
    assert stages[3].zero3_gather > 0 and stages[2].zero3_gather == 0
    assert "DeepSpeed ZeRO-3" in format_plan(plan(composed(*base, "backend=deepspeed", "deepspeed.zero_stage=3")))


# ---------------------------------------------------------------- calibration (bench/planning/calibrate.py)

def load_calibration():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_planning_calibrate", REPO / "bench" / "planning" / "calibrate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_planning_calibrate", module)   # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_default_matmul_efficiency_reproduces_flm_101b_within_5_percent() -> None:
    """The shipped calibration (docs/planning.md) still predicts the three FLM-101B stages on A800."""
    calibration = load_calibration()
    for run in calibration.FLM:
        predicted = calibration.predicted_tflops(run, Assumptions().matmul_efficiency)
        assert predicted == pytest.approx(run.measured_tflops, rel=0.05), run.name
    # the conversion to Megatron's convention: eq. 3 per token, e.g. the 1T run's 4 passes and full attention
    one_t = calibration.MEGATRON[-1]
    assert calibration.publication_flops_per_token(one_t, 0.0) == pytest.approx(
        96 * 128 * 25600**2 * (1 + 2048 / (6 * 25600) + 51200 / (16 * 128 * 25600)))


def test_the_real_devices_figures_override_the_preset() -> None:
    """What the trainer passes on a CUDA host (pretrain/config/validate.py::fit_errors): its own device."""
    result = plan(composed(), capacity_gib=40.0, peak_tflops=312.0, device_name="NVIDIA A100-SXM4-40GB")
    assert result.capacity_gib == 40.0 and result.fits is False
    assert "NVIDIA A100-SXM4-40GB has 40 GiB (this CUDA device's memory)" in result.refusal
    assert "parallel.pipeline_model_parallel_size=8 parallel.data_parallel_size=28" in result.refusal  # sized for 40 GiB
