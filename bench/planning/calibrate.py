"""The planner's predicted throughput against published measurements, and its calibration.

    python bench/planning/calibrate.py            # prints the markdown table in docs/planning.md

Each row is a published training run: its model shape, layout, batch and cluster go through
`pretrain.tools.fit_check.plan` (the same code the trainer's fit check runs) and the predicted
tokens/s/GPU is converted into the FLOP convention of the publication, so the TFLOP/s compare
like with like. `matmul_efficiency` is fitted on one set (FLM-101B on A800, the hardware
Tele-FLM was trained on) and the other set (Megatron-LM 2021 on A100) is reported held out.
The figures are copied from the papers (sources in docs/planning.md); nothing is read from
outside this repository.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:   # runnable as a script from any directory
    sys.path.insert(0, str(REPO))

from pretrain.tools.fit_check import Assumptions, plan  # noqa: E402

A100_PEAK = 312.0   # dense BF16/FP16 TFLOP/s, A100 and A800 SXM


@dataclass(frozen=True)
class Run:
    """One published measurement and the layout it was measured on."""

    source: str
    name: str
    layers: int
    hidden: int
    heads: int
    vocab: int
    seq: int
    tp: int
    pp: int
    dp: int
    global_batch: int
    measured_tflops: float        # per GPU, in the publication's own FLOP convention
    convention: str               # "megatron_recompute" | "model"
    recompute: str
    distributed_optimizer: bool
    overlap_grad_reduce: bool
    cluster: dict[str, Any]
    micro_batch: int = 1


# DGX A100 (Selene, Narayanan et al. 2021): NVLink 600 GB/s, 8 x 200 Gb/s HDR InfiniBand per node.
SELENE = {"name": "selene", "nodes": 420, "gpus_per_node": 8,
          "gpu": {"name": "A100-SXM4-80GB", "memory_gb": 80, "peak_bf16_tflops": A100_PEAK, "nvlink_gb_per_s": 600,
                  "internode_gb_per_s": 200, "compute_capability": [8, 0]}}
# FLM-101B's 24 DGX-A800 servers (192 GPUs): A800 NVLink 400 GB/s; 8 x 200 Gb/s HDR per node (ASSUMPTION:
# the DGX A800 network; the paper gives the server count, not the NICs).
FLM_A800 = {"name": "flm_a800", "nodes": 24, "gpus_per_node": 8,
            "gpu": {"name": "A800-SXM4-80GB", "memory_gb": 80, "peak_bf16_tflops": A100_PEAK, "nvlink_gb_per_s": 400,
                    "internode_gb_per_s": 200, "compute_capability": [8, 0]}}


def megatron_2021(params: str, heads: int, hidden: int, layers: int, tp: int, pp: int, gpus: int, batch: int,
                  tflops: float) -> Run:
    """Narayanan et al. (SC21, arXiv 2104.04473) Table 1: GPT, V=51200, s=2048, full activation
    recomputation, plain data-parallel all-reduce (no distributed optimizer, no overlap in 2021)."""
    return Run("Megatron-LM 2021", f"GPT {params}", layers, hidden, heads, 51200, 2048, tp, pp, gpus // (tp * pp),
               batch, tflops, "megatron_recompute", "full", False, False, SELENE)


def flm_101b(name: str, hidden: int, tp: int, pp: int, dp: int, batch: int, tflops: float) -> Run:
    """FLM-101B (arXiv 2309.03852) growth stages on 192 A800: 80 layers and head dim 128 throughout
    (ASSUMPTION for 16B and 51B: width-only growth, hidden 4096 / 7168 / 10240 gives 16.9B / 50.8B /
    102.7B untied parameters), vocab 100256, s=2048; no recomputation and the distributed optimizer
    with overlapped reductions assumed (Megatron-LM defaults of 2023)."""
    return Run("FLM-101B", f"FLM {name}", 80, hidden, hidden // 128, 100256, 2048, tp, pp, dp, batch, tflops,
               "model", "none", True, True, FLM_A800)


FLM = [
    flm_101b("16B", 4096, 2, 1, 96, 2304, 162.0),
    flm_101b("51B", 7168, 4, 2, 24, 2304, 160.0),
    flm_101b("101B", 10240, 4, 4, 12, 2160, 165.0),
]
MEGATRON = [
    megatron_2021("1.7B", 24, 2304, 24, 1, 1, 32, 512, 137.0),
    megatron_2021("3.6B", 32, 3072, 30, 2, 1, 64, 512, 138.0),
    megatron_2021("7.5B", 32, 4096, 36, 4, 1, 128, 512, 142.0),
    megatron_2021("18.4B", 48, 6144, 40, 8, 1, 256, 1024, 135.0),
    megatron_2021("39.1B", 64, 8192, 48, 8, 2, 512, 1536, 138.0),
    megatron_2021("76.1B", 80, 10240, 60, 8, 4, 1024, 1792, 140.0),
    megatron_2021("145.6B", 96, 12288, 80, 8, 8, 1536, 2304, 148.0),
    megatron_2021("310.1B", 128, 16384, 96, 8, 16, 1920, 2160, 155.0),
    megatron_2021("529.6B", 128, 20480, 105, 8, 35, 2520, 2520, 163.0),
    megatron_2021("1008.0B", 160, 25600, 128, 8, 64, 3072, 3072, 163.0),
]


def trainer_config(run: Run, matmul_efficiency: float) -> dict[str, Any]:
    """The run as a trainer config. A GeLU 4h MLP (2 matrices, 8h^2) becomes a SwiGLU of width 8h/3
    (3 matrices, the same 8h^2 weights and FLOPs): the planner models Tele-FLM's SwiGLU block."""
    return {
        "model": {"name": run.name, "num_layers": run.layers, "hidden_size": run.hidden,
                  "num_attention_heads": run.heads, "num_query_groups": run.heads, "kv_channels": run.hidden // run.heads,
                  "ffn_hidden_size": round(8 * run.hidden / 3), "vocab_size": run.vocab,
                  "make_vocab_size_divisible_by": 128, "seq_length": run.seq},
        "parallel": {"name": "published", "tensor_model_parallel_size": run.tp, "pipeline_model_parallel_size": run.pp,
                     "data_parallel_size": run.dp, "virtual_pipeline_model_parallel_size": None,
                     "sequence_parallel": False, "use_distributed_optimizer": run.distributed_optimizer},
        "train": {"micro_batch_size": run.micro_batch, "global_batch_size": run.global_batch, "recompute": run.recompute,
                  "bf16": True, "overlap_grad_reduce": run.overlap_grad_reduce,
                  "overlap_param_gather": run.distributed_optimizer},
        "cluster": run.cluster,
        "plan": {"matmul_efficiency": matmul_efficiency},
    }


def publication_flops_per_token(run: Run, planner_flops_per_token: float) -> float:
    """FLOPs one token counts for in the publication's TFLOP/s.

    megatron_recompute: Narayanan et al.'s eq. 3 per token, 96 l h^2 (1 + s/6h + V/16lh): four passes
    (forward, recomputed forward, two backward), full (non-causal) attention. model: the planner's
    own 6N + 6 L s d (causal), the convention FLM-101B's MFU is taken to use."""
    if run.convention == "megatron_recompute":
        l, h, s, v = run.layers, run.hidden, run.seq, run.vocab
        return 96 * l * h * h * (1 + s / (6 * h) + v / (16 * l * h))
    return planner_flops_per_token


def predicted_tflops(run: Run, matmul_efficiency: float) -> float:
    result = plan(trainer_config(run, matmul_efficiency), suggest=False)
    if result.step is None:
        raise RuntimeError(f"{run.name}: the planner gave no step time (cluster bandwidths missing?)")
    return result.step.tokens_per_s_per_gpu * publication_flops_per_token(run, result.flops_per_token) / 1e12


def mean_log_error(runs: list[Run], matmul_efficiency: float) -> float:
    return sum(math.log(predicted_tflops(r, matmul_efficiency) / r.measured_tflops) for r in runs) / len(runs)


def calibrate(runs: list[Run], low: float = 0.2, high: float = 1.0) -> float:
    """The matmul_efficiency whose predictions are right on average (geometric mean) over `runs`."""
    for _ in range(40):
        mid = (low + high) / 2
        if mean_log_error(runs, mid) < 0:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def table(runs: list[Run], matmul_efficiency: float, fitted_on: set[str]) -> list[str]:
    lines = ["| run | layout (TP/PP/DP, batch) | measured TFLOP/s (% of 312) | predicted | error | set |",
             "|---|---|---:|---:|---:|---|"]
    for run in runs:
        predicted = predicted_tflops(run, matmul_efficiency)
        error = predicted / run.measured_tflops - 1
        lines.append(f"| {run.name} | {run.tp}/{run.pp}/{run.dp}, {run.global_batch}x{run.seq} | "
                     f"{run.measured_tflops:.0f} ({run.measured_tflops / A100_PEAK:.1%}) | {predicted:.0f} "
                     f"({predicted / A100_PEAK:.1%}) | {error:+.1%} | "
                     f"{'fit' if run.source in fitted_on else 'held out'} |")
    return lines


def summary(runs: list[Run], matmul_efficiency: float) -> str:
    errors = [abs(predicted_tflops(r, matmul_efficiency) / r.measured_tflops - 1) for r in runs]
    return f"mean |error| {sum(errors) / len(errors):.1%}, max {max(errors):.1%}"


def main() -> None:
    shipped = Assumptions().matmul_efficiency
    fitted = calibrate(FLM)
    print(f"matmul_efficiency fitted on FLM-101B: {fitted:.3f} (shipped default: {shipped}; "
          f"fitted on Megatron-LM 2021 instead: {calibrate(MEGATRON):.3f})\n")
    print("\n".join(table(FLM + MEGATRON, shipped, {"FLM-101B"})))
    print(f"\nat {shipped}: FLM-101B (fit) {summary(FLM, shipped)}; Megatron-LM 2021 (held out) "
          f"{summary(MEGATRON, shipped)}")
    print(f"before calibration, at 0.55: FLM-101B {summary(FLM, 0.55)}; Megatron-LM 2021 {summary(MEGATRON, 0.55)}")


if __name__ == "__main__":
    main()
