"""`python -m pretrain.tools.fit_check`: will this model/layout/cluster fit, and how fast will it run?

Prints a per-GPU memory table for the first and last pipeline stage (the two
extremes: the first holds the most micro-batches in flight, the last the
logits) and an estimated step time and MFU, and exits non-zero, naming the
keys to change, when the config cannot fit in `cluster.gpu.memory_gb`.

    python -m pretrain.tools.fit_check                                   # Tele-FLM 52B on 112 x 8 A800
    python -m pretrain.tools.fit_check model=1t parallel=teleflm_1t train.recompute=full
    python -m pretrain.tools.fit_check parallel=single                   # refused: names TP/PP

It reads the trainer's own config (configs/plan.yaml composes configs/pretrain.yaml
with the Tele-FLM 52B recipe, configs/experiment/teleflm_52b.yaml) and takes the
fusions and communication overlaps from `choose_fast_path` for the cluster's GPU,
so it plans what the trainer would build there; only the calibration knobs under
`plan:` are its own.

The trainer runs the same check before any process group starts:
pretrain/config/validate.py::fit_errors calls `require_fit` with the real
device's memory and peak when CUDA is present, else with the cluster preset's,
and refuses the run with this module's message; with no GPU anywhere (a CPU run,
cluster=local) the plan is informational and never refuses. Every number is an
estimate; docs/planning.md lists the formulas, their sources, the comparison
with published throughput and what is left out.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pretrain.model.fast_path import FastPath, Machine, choose_fast_path
from pretrain.tools.flops import model_flops_per_token, model_padded_vocab, parameter_count
from pretrain.tools.memory import (
    GIB,
    BlockShape,
    in_flight_layer_activations,
    layer_activation_bytes,
    logits_bytes,
    pipeline_buffer_bytes,
    recompute_working_bytes,
)

REFUSED_EXIT_CODE = 2
RECOMPUTE_MODES = ("none", "selective", "full")
# Present on every Linux host with an NVIDIA driver loaded: without it there is no CUDA device,
# and the check costs nothing, where `import torch` to ask torch.cuda takes seconds.
NVIDIA_DRIVER = Path("/proc/driver/nvidia/version")


class PlanRefused(RuntimeError):
    """The config cannot run as given; the message says which keys to change."""


CALIBRATION_KEYS = ("matmul_efficiency", "comm_efficiency", "fixed_workspace_gib", "fragmentation")


@dataclass(frozen=True)
class Assumptions:
    """What the estimate assumes: four calibration knobs and four facts about the trainer.

    Calibration (the only planner-owned keys; `plan:` in configs/plan.yaml, same
    defaults): matmul_efficiency, the achieved fraction of the dense BF16 peak
    for the model's matmuls and attention (fitted on FLM-101B's A800 throughput,
    bench/planning/calibrate.py); comm_efficiency, achieved NCCL bus bandwidth
    as a fraction of the per-direction link bandwidth; fixed_workspace_gib, CUDA
    context, NCCL communicators and cuBLAS/attention workspaces; fragmentation,
    caching-allocator slack on the dynamic (activation) part of memory.

    Trainer facts (never set by hand: `from_fast_path` copies them from
    pretrain.model.fast_path.choose_fast_path for the cluster's machine):
    the DDP overlaps, the gradient-reduce dtype, and fused_swiglu, whether
    SwiGLU keeps only its input (megatron's bias_activation_fusion) or also
    SiLU(gate), 2 bytes x s x b x ffn more per layer.
    """

    matmul_efficiency: float = 0.62   # bench/planning/calibrate.py: 0.621 fitted on FLM-101B's three stages
    comm_efficiency: float = 0.75
    fixed_workspace_gib: float = 3.0
    fragmentation: float = 0.10
    overlap_grad_reduce: bool = True
    overlap_param_gather: bool = True
    grad_reduce_in_bf16: bool = False
    fused_swiglu: bool = True

    @classmethod
    def from_fast_path(cls, calibration: Mapping[str, Any], fast_path: FastPath) -> "Assumptions":
        return cls(**{k: float(calibration[k]) for k in CALIBRATION_KEYS if calibration.get(k) is not None},
                   overlap_grad_reduce=fast_path.overlap_grad_reduce,
                   overlap_param_gather=fast_path.overlap_param_gather,
                   grad_reduce_in_bf16=not fast_path.grad_reduce_in_fp32,
                   fused_swiglu=fast_path.fusions.get("bias_activation_fusion", False))


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    dp: int
    vpp: int
    sequence_parallel: bool

    @property
    def world(self) -> int:
        return self.tp * self.pp * self.dp

    def describe(self) -> str:
        vpp = f" VPP{self.vpp}" if self.vpp > 1 else ""
        sp = " +SP" if self.sequence_parallel else ""
        return f"TP{self.tp} PP{self.pp}{vpp} DP{self.dp}{sp} = {self.world} GPUs"


@dataclass(frozen=True)
class StageMemory:
    """Bytes on one GPU of a pipeline stage; `total` is what must fit in the GPU."""

    name: str
    layers: int
    parameters: int
    weights: float
    gradients: float
    optimizer: float
    activations: float
    in_flight: float            # (layer, micro-batch) activation sets held at the peak
    recompute_working: float
    logits: float
    pipeline_buffers: float
    zero3_gather: float
    workspace: float
    fragmentation: float

    @property
    def total(self) -> float:
        return (self.weights + self.gradients + self.optimizer + self.activations + self.recompute_working
                + self.logits + self.pipeline_buffers + self.zero3_gather + self.workspace + self.fragmentation)


@dataclass(frozen=True)
class StepTime:
    """Seconds per optimizer step and what they are made of (critical path of the slowest stage)."""

    micro_batches: int
    compute_per_micro_batch: float
    tp_comm_per_micro_batch: float
    bubble_fraction: float
    pipeline: float
    pp_p2p: float
    dp_comm_total: float
    dp_comm_exposed: float
    step: float
    tokens_per_s_per_gpu: float
    model_tflops_per_gpu: float
    mfu: float


@dataclass(frozen=True)
class Plan:
    """Everything `python -m pretrain.tools.fit_check` prints, as numbers."""

    model_name: str
    cluster_name: str
    gpu_name: str | None
    capacity_gib: float | None
    peak_tflops: float | None
    layout: Layout
    seq_length: int
    micro_batch_size: int
    global_batch_size: int
    recompute: str
    flash_attention: bool
    optimizer: str
    zero_stage: int | None
    padded_vocab: int
    parameters: dict[str, int]
    flops_per_token: float
    activation_per_layer: dict[str, float]   # bytes per layer and micro-batch, by recompute mode
    stages: list[StageMemory]
    step: StepTime | None
    assumptions: Assumptions
    fast_path: FastPath | None = None        # what the trainer would use on this machine
    bf16: bool = True                        # train.bf16: false keeps fp32 weights and activations
    capacity_source: str = "cluster.gpu.memory_gb"   # or the measured CUDA device the trainer passed
    problems: list[str] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)
    refusal: str | None = None

    @property
    def peak_gib(self) -> float:
        return max(stage.total for stage in self.stages) / GIB

    @property
    def fits(self) -> bool | None:
        """True/False against the GPU's memory; None when there is no GPU to compare with."""
        if self.problems:
            return False
        if self.capacity_gib is None:
            return None
        return self.peak_gib <= self.capacity_gib


# ----------------------------------------------------------------------------
# Reading the config (Hydra DictConfig or plain nested dicts)
# ----------------------------------------------------------------------------

def _select(cfg: Any, dotted: str, default: Any = None) -> Any:
    node = cfg
    for part in dotted.split("."):
        if node is None:
            return default
        try:
            node = node[part]
        except (KeyError, TypeError, AttributeError, IndexError):
            return default
    return default if node is None else node


def cluster_machine(cfg: Any) -> Machine | None:
    """The machine a cluster preset describes: CUDA, TransformerEngine (the gpu extra), and the
    preset's `cluster.gpu.compute_capability`; None when the preset has no GPU (cluster=local)."""
    gpu = _select(cfg, "cluster.gpu")
    if not gpu:
        return None
    capability = _select(gpu, "compute_capability")
    return Machine(cuda=True, transformer_engine=True,
                   compute_capability=tuple(int(v) for v in capability) if capability else None)


def has_cuda() -> bool:
    """A usable CUDA device here; torch is imported only where an NVIDIA driver is loaded."""
    if not NVIDIA_DRIVER.exists():
        return False
    import torch

    return torch.cuda.is_available()


def local_machine() -> Machine:
    """This host, as the trainer would see it (no torch import on a host without a driver)."""
    if not has_cuda():
        return Machine(cuda=False, transformer_engine=False)
    from pretrain.model.fast_path import detect_machine

    return detect_machine()


def planned_fast_path(cfg: Any, machine: Machine | None = None) -> FastPath:
    """choose_fast_path for `machine` (default: the cluster preset's GPU, else this host)."""
    machine = machine or cluster_machine(cfg) or local_machine()
    try:
        return choose_fast_path(cfg, machine)
    except (ValueError, RuntimeError) as error:
        raise PlanRefused(str(error)) from error


def _assumptions_from(cfg: Any, fast_path: FastPath) -> Assumptions:
    calibration = _select(cfg, "plan", {}) or {}
    return Assumptions.from_fast_path({k: _select(calibration, k) for k in CALIBRATION_KEYS}, fast_path)


def _optimizer_kind(cfg: Any) -> str:
    """The trainer's `parallel.use_distributed_optimizer`: distributed (state sharded over DP) or plain."""
    return "distributed" if _select(cfg, "parallel.use_distributed_optimizer", True) else "plain"


def _zero_stage(cfg: Any) -> int | None:
    """`deepspeed.zero_stage` when the trainer runs backend=deepspeed; None for megatron."""
    if _select(cfg, "backend", "megatron") != "deepspeed":
        return None
    return int(_select(cfg, "deepspeed.zero_stage", 1))


def _layout_from(cfg: Any) -> Layout:
    tp = int(_select(cfg, "parallel.tensor_model_parallel_size", 1))
    return Layout(
        tp=tp,
        pp=int(_select(cfg, "parallel.pipeline_model_parallel_size", 1)),
        dp=int(_select(cfg, "parallel.data_parallel_size", 1)),
        vpp=int(_select(cfg, "parallel.virtual_pipeline_model_parallel_size", 1) or 1),
        sequence_parallel=bool(_select(cfg, "parallel.sequence_parallel", False)) and tp > 1,
    )


def cuda_device() -> tuple[str, float, float | None] | None:
    """(name, memory GiB, dense BF16 peak or None if unknown) of this process's CUDA device; None without one."""
    if not has_cuda():
        return None
    import torch

    from pretrain.tools.flops import detect_peak_bf16_tflops

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return props.name, props.total_memory / GIB, detect_peak_bf16_tflops()


def _gpu_facts(cfg: Any, capacity_gib: float | None, peak_tflops: float | None,
               device_name: str | None) -> tuple[str | None, float | None, float | None]:
    """GPU name, memory and peak: the given device's, else cluster.gpu's, else the CUDA device we run on."""
    gpu = _select(cfg, "cluster.gpu")
    if gpu:
        name = device_name or _select(gpu, "name")
        capacity = capacity_gib if capacity_gib is not None else _select(gpu, "memory_gb")
        peak = peak_tflops if peak_tflops is not None else _select(gpu, "peak_bf16_tflops")
        return name, (float(capacity) if capacity else None), (float(peak) if peak else None)
    device = cuda_device() if capacity_gib is None else None
    if device is None:
        return device_name, capacity_gib, peak_tflops
    name, capacity, peak = device
    return name, capacity, peak_tflops if peak_tflops is not None else peak


# ----------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------

def _layer_problems(cfg: Any, layout: Layout, micro_batch: int, global_batch: int, seq: int) -> list[str]:
    """Layouts Megatron itself would reject; each message names the key to change."""
    model = cfg["model"]
    problems = []
    heads = int(_select(model, "num_attention_heads"))
    groups = int(_select(model, "num_query_groups", heads))
    layers = int(_select(model, "num_layers"))
    if heads % layout.tp or groups % layout.tp:
        problems.append(f"parallel.tensor_model_parallel_size={layout.tp} must divide model.num_attention_heads={heads} "
                        f"and model.num_query_groups={groups}")
    if layers % (layout.pp * layout.vpp):
        problems.append(f"model.num_layers={layers} is not divisible by parallel.pipeline_model_parallel_size x "
                        f"virtual_pipeline_model_parallel_size = {layout.pp * layout.vpp}")
    if global_batch % (micro_batch * layout.dp):
        problems.append(f"train.global_batch_size={global_batch} must be a multiple of train.micro_batch_size x "
                        f"parallel.data_parallel_size = {micro_batch * layout.dp}")
    elif layout.vpp > 1 and (global_batch // (micro_batch * layout.dp)) % layout.pp:
        problems.append("the interleaved schedule needs the number of micro-batches to be a multiple of "
                        "parallel.pipeline_model_parallel_size")
    if layout.sequence_parallel and seq % layout.tp:
        problems.append(f"train.seq_length={seq} must be divisible by parallel.tensor_model_parallel_size={layout.tp} "
                        "with sequence parallelism")
    nodes = int(_select(cfg, "cluster.nodes", 0) or 0)
    per_node = int(_select(cfg, "cluster.gpus_per_node", 0) or 0)
    if nodes and per_node and layout.world > nodes * per_node:
        problems.append(f"TP x PP x DP = {layout.world} GPUs but cluster.nodes x gpus_per_node = {nodes * per_node}: "
                        "lower parallel.data_parallel_size or raise cluster.nodes")
    return problems


def _stage_memory(name: str, stage: int, *, cfg: Any, layout: Layout, shape: BlockShape, padded_vocab: int,
                  counts: dict[str, int], recompute: str, flash: bool, optimizer: str, zero_stage: int | None,
                  micro_batches: int, assumptions: Assumptions, bf16: bool) -> StageMemory:
    model = cfg["model"]
    layers_total = int(_select(model, "num_layers"))
    layers = math.ceil(layers_total / layout.pp)
    hidden = shape.hidden
    is_first, is_last = stage == 0, stage == layout.pp - 1
    tp, dp = layout.tp, layout.dp

    # Matmul weights are split over TP; norm gains are replicated on every TP rank.
    params = layers * (counts["per_layer_matmul"] // tp + (counts["per_layer"] - counts["per_layer_matmul"]))
    if is_first:
        params += counts["embedding"] // tp
    if is_last:
        params += counts["output"] // tp + counts["final_norm"]

    shard_optimizer = optimizer == "distributed" or (zero_stage or 0) >= 1
    shard_grads = (zero_stage or 0) >= 2
    shard_weights = (zero_stage or 0) >= 3
    # train.bf16: bf16 weights + fp32 master in the optimizer (12 bytes: master, Adam m, v);
    # fp32 training: the weights are the master copy (optimizer state is Adam m, v: 8 bytes).
    weight_bytes, state_bytes, activation_scale = (2.0, 12.0, 1.0) if bf16 else (4.0, 8.0, 2.0)
    weights = weight_bytes * params / (dp if shard_weights else 1)
    gradients = 4.0 * params / (dp if shard_grads else 1)            # fp32 main_grad accumulation buffer
    optimizer_bytes = state_bytes * params / (dp if shard_optimizer else 1)
    zero3_gather = 0.0
    if shard_weights:  # two layers' full weights gathered at a time (current + prefetch)
        zero3_gather = 2 * weight_bytes * (counts["per_layer_matmul"] // tp)

    # The activation formulas count bf16 bytes; fp32 training keeps every one of them at 4.
    per_layer = activation_scale * layer_activation_bytes(shape, tp, layout.sequence_parallel, recompute, flash)
    in_flight = in_flight_layer_activations(stage, layers_total, layout.pp, layout.vpp, micro_batches)
    activations = per_layer * in_flight
    working = activation_scale * recompute_working_bytes(shape, tp, layout.sequence_parallel, recompute, flash)
    logits = logits_bytes(shape.seq_length, shape.micro_batch, hidden, padded_vocab, tp,
                          layout.sequence_parallel) if is_last else 0.0
    buffers = activation_scale * pipeline_buffer_bytes(shape.seq_length, shape.micro_batch, hidden, tp,
                                                       layout.sequence_parallel, layout.pp)
    dynamic = activations + working + logits + buffers + zero3_gather
    return StageMemory(
        name=name, layers=layers, parameters=params, weights=weights, gradients=gradients,
        optimizer=optimizer_bytes, activations=activations, in_flight=in_flight, recompute_working=working,
        logits=logits, pipeline_buffers=buffers, zero3_gather=zero3_gather,
        workspace=assumptions.fixed_workspace_gib * GIB, fragmentation=assumptions.fragmentation * dynamic,
    )


# ----------------------------------------------------------------------------
# Step time
# ----------------------------------------------------------------------------

def _link_bandwidth(cfg: Any, spans_nodes: bool, assumptions: Assumptions) -> float | None:
    """Achievable bus bandwidth per GPU in bytes/s.

    NVLink figures in the cluster presets are bidirectional totals, so one
    direction gets half. Inter-node bandwidth is per node and shared by its
    GPUs, which all run their own DP/PP collectives at the same time.
    """
    if spans_nodes:
        per_node = _select(cfg, "cluster.gpu.internode_gb_per_s")
        gpus = int(_select(cfg, "cluster.gpus_per_node", 8) or 8)
        if not per_node:
            return None
        return float(per_node) * 1e9 / gpus * assumptions.comm_efficiency
    nvlink = _select(cfg, "cluster.gpu.nvlink_gb_per_s")
    if not nvlink:
        return None
    return float(nvlink) * 1e9 / 2 * assumptions.comm_efficiency


def _step_time(cfg: Any, *, layout: Layout, shape: BlockShape, padded_vocab: int, counts: dict[str, int],
               stages: list[StageMemory], recompute: str, optimizer: str, zero_stage: int | None,
               micro_batches: int, global_batch: int, flops_per_token: float, peak_tflops: float,
               assumptions: Assumptions) -> StepTime | None:
    model = cfg["model"]
    tp, pp, dp = layout.tp, layout.pp, layout.dp
    s, b, h = shape.seq_length, shape.micro_batch, shape.hidden
    per_node = int(_select(cfg, "cluster.gpus_per_node", 8) or 8)
    tp_bw = _link_bandwidth(cfg, tp > per_node, assumptions)
    # Megatron's rank order is tp-dp-pp: DP neighbours are tp ranks apart, PP neighbours tp*dp apart.
    dp_bw = _link_bandwidth(cfg, tp * dp > per_node, assumptions)
    pp_bw = _link_bandwidth(cfg, tp * dp >= per_node, assumptions)
    if None in (tp_bw, dp_bw, pp_bw):
        return None
    flops_rate = assumptions.matmul_efficiency * peak_tflops * 1e12
    tokens_per_mb = s * b

    # Hardware FLOPs per token per layer: model FLOPs plus what recomputation repeats.
    layer_matmul_fwd = 2.0 * counts["per_layer_matmul"]
    attention_fwd = 2.0 * s * shape.q_width            # causal QK^T and AV
    layer_flops = 3 * (layer_matmul_fwd + attention_fwd)
    if recompute == "full":
        layer_flops += layer_matmul_fwd + attention_fwd
    elif recompute == "selective":
        layer_flops += attention_fwd
    logits_flops = 6.0 * h * padded_vocab
    layers = stages[0].layers
    stage_flops = [layers * layer_flops, layers * layer_flops + logits_flops]   # first, last
    compute_mb = max(stage_flops) * tokens_per_mb / tp / flops_rate

    # TP collectives per layer per micro-batch, each moving (t-1)/t of the full bf16 activation:
    # 4 in forward, 4 in backward (all-gather/reduce-scatter pairs, or all-reduces as 2 each),
    # 2 more with SP (the weight-gradient matmuls re-gather their input), 4 more under full recompute.
    tp_mb = 0.0
    if tp > 1:
        per_layer_ops = 8 + (2 if layout.sequence_parallel else 0) + (4 if recompute == "full" else 0)
        volume = (tp - 1) / tp * 2.0 * tokens_per_mb * h
        tp_mb = (layers * per_layer_ops + 2) * volume / tp_bw       # +2: the last stage's output layer

    bubble_steps = (pp - 1) / layout.vpp
    pipeline = (micro_batches + bubble_steps) * (compute_mb + tp_mb)
    bubble_fraction = bubble_steps / (micro_batches + bubble_steps)
    p2p_bytes = 2.0 * tokens_per_mb * h / (tp if layout.sequence_parallel else 1)
    pp_p2p = 2 * (micro_batches + pp - 1) * p2p_bytes / pp_bw if pp > 1 else 0.0

    # Data-parallel traffic for the largest stage, ring collectives: (d-1)/d of the buffer per op.
    params = max(stage.parameters for stage in stages)
    grad_bytes = (2.0 if assumptions.grad_reduce_in_bf16 else 4.0) * params
    ring = (dp - 1) / dp
    backward_mb = compute_mb * 2 / 3
    forward_mb = compute_mb / 3
    if dp == 1:
        dp_total = dp_exposed = 0.0
    elif (zero_stage or 0) >= 2:
        # ZeRO-2/3 reduce-scatter every micro-batch's gradients; ZeRO-3 also gathers weights twice.
        per_mb = ring * grad_bytes / dp_bw
        gather = ring * 2.0 * params / dp_bw
        if (zero_stage or 0) >= 3:
            per_mb += 2 * gather
            gather = 0.0
        dp_total = micro_batches * per_mb + gather
        dp_exposed = micro_batches * max(0.0, per_mb - backward_mb) + gather
    elif optimizer == "distributed" or (zero_stage or 0) == 1:
        reduce_scatter = ring * grad_bytes / dp_bw
        all_gather = ring * 2.0 * params / dp_bw
        dp_total = reduce_scatter + all_gather
        dp_exposed = (max(0.0, reduce_scatter - backward_mb) if assumptions.overlap_grad_reduce else reduce_scatter)
        dp_exposed += max(0.0, all_gather - forward_mb) if assumptions.overlap_param_gather else all_gather
    else:
        all_reduce = 2 * ring * grad_bytes / dp_bw
        dp_total = all_reduce
        dp_exposed = max(0.0, all_reduce - backward_mb) if assumptions.overlap_grad_reduce else all_reduce

    step = pipeline + pp_p2p + dp_exposed
    tokens = global_batch * s
    tokens_per_gpu = tokens / step / layout.world
    model_tflops = tokens_per_gpu * flops_per_token / 1e12
    return StepTime(
        micro_batches=micro_batches, compute_per_micro_batch=compute_mb, tp_comm_per_micro_batch=tp_mb,
        bubble_fraction=bubble_fraction, pipeline=pipeline, pp_p2p=pp_p2p, dp_comm_total=dp_total,
        dp_comm_exposed=dp_exposed, step=step, tokens_per_s_per_gpu=tokens_per_gpu,
        model_tflops_per_gpu=model_tflops, mfu=model_tflops / peak_tflops,
    )


# ----------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------

def plan(cfg: Any, *, capacity_gib: float | None = None, peak_tflops: float | None = None,
         device_name: str | None = None, suggest: bool = True, machine: Machine | None = None,
         assumptions: Assumptions | None = None) -> Plan:
    """Estimate per-GPU memory and step time for the trainer config `cfg`.

    capacity_gib / peak_tflops / device_name override the cluster preset
    (the trainer passes the real device's, `cuda_device()`). machine: whose fast path to plan
    (default: the cluster preset's GPU, else this host). assumptions: given
    by the suggestion search, which re-plans hundreds of layout variants of
    one config and need not re-derive them. Without a GPU in the cluster
    preset and no CUDA device the plan is informational: `fits` is None,
    `refusal` None.
    """
    model = cfg["model"]
    layout = _layout_from(cfg)
    seq = int(_select(cfg, "train.seq_length", _select(model, "seq_length")))
    micro_batch = int(_select(cfg, "train.micro_batch_size", 1))
    global_batch = int(_select(cfg, "train.global_batch_size", micro_batch * layout.dp))
    recompute = str(_select(cfg, "train.recompute", "none"))
    if recompute not in RECOMPUTE_MODES:
        raise PlanRefused(f"train.recompute must be one of {RECOMPUTE_MODES}, got {recompute!r}")
    # TE's fused attention and SDPA (the local spec) are both flash-style: no s x s scores kept.
    flash = True
    optimizer = _optimizer_kind(cfg)
    zero_stage = _zero_stage(cfg)
    fast_path = None
    if assumptions is None:
        fast_path = planned_fast_path(cfg, machine)
        assumptions = _assumptions_from(cfg, fast_path)
    gpu_name, capacity, peak = _gpu_facts(cfg, capacity_gib, peak_tflops, device_name)

    padded_vocab = model_padded_vocab(model, layout.tp)
    counts = parameter_count(model, padded_vocab)
    flops_per_token = model_flops_per_token(model, seq, padded_vocab=padded_vocab)
    hidden = int(_select(model, "hidden_size"))
    heads = int(_select(model, "num_attention_heads"))
    head_dim = int(_select(model, "kv_channels", hidden // heads))
    shape = BlockShape(
        seq_length=seq, micro_batch=micro_batch, hidden=hidden, heads=heads, q_width=heads * head_dim,
        kv_width=int(_select(model, "num_query_groups", heads)) * head_dim,
        ffn=int(_select(model, "ffn_hidden_size")), swiglu=True, fused_swiglu=assumptions.fused_swiglu,
        hidden_dropout=float(_select(model, "hidden_dropout", 0.0)),
        attention_dropout=float(_select(model, "attention_dropout", 0.0)),
    )
    problems = _layer_problems(cfg, layout, micro_batch, global_batch, seq)
    micro_batches = max(1, global_batch // (micro_batch * layout.dp))

    bf16 = _select(cfg, "train.bf16", None) is not False   # null: BF16, the GPU default (resolve_precision)
    common = dict(cfg=cfg, layout=layout, shape=shape, padded_vocab=padded_vocab, counts=counts,
                  recompute=recompute, flash=flash, optimizer=optimizer, zero_stage=zero_stage,
                  micro_batches=micro_batches, assumptions=assumptions, bf16=bf16)
    stage_ids = [0] if layout.pp == 1 else [0, layout.pp - 1]
    names = ["only stage"] if layout.pp == 1 else ["first stage", "last stage"]
    # With PP1 the only stage is both first (embedding) and last (output layer, logits).
    stages = [_stage_memory(name, sid, **common) for name, sid in zip(names, stage_ids)]

    per_layer = {mode: layer_activation_bytes(shape, layout.tp, layout.sequence_parallel, mode, flash)
                 for mode in RECOMPUTE_MODES}
    step = None
    if peak:
        step = _step_time(cfg, layout=layout, shape=shape, padded_vocab=padded_vocab, counts=counts,
                          stages=stages, recompute=recompute,
                          optimizer=optimizer, zero_stage=zero_stage, micro_batches=micro_batches,
                          global_batch=global_batch, flops_per_token=flops_per_token, peak_tflops=peak,
                          assumptions=assumptions)

    result = Plan(
        model_name=str(_select(model, "name", "model")), cluster_name=str(_select(cfg, "cluster.name", "?")),
        gpu_name=gpu_name, capacity_gib=capacity, peak_tflops=peak, layout=layout, seq_length=seq,
        micro_batch_size=micro_batch, global_batch_size=global_batch, recompute=recompute,
        flash_attention=flash, optimizer=optimizer, zero_stage=zero_stage, padded_vocab=padded_vocab,
        parameters=counts, flops_per_token=flops_per_token, activation_per_layer=per_layer, stages=stages,
        step=step, assumptions=assumptions, fast_path=fast_path, bf16=bf16, problems=problems,
        capacity_source="this CUDA device's memory" if device_name and capacity_gib is not None
        else "cluster.gpu.memory_gb",
    )
    if result.fits is False:
        suggestions = (suggest_changes(cfg, capacity_gib=capacity_gib, peak_tflops=peak_tflops,
                                       device_name=device_name, assumptions=assumptions) if suggest else [])
        result = replace(result, suggestions=suggestions, refusal=_refusal_message(result, suggestions))
    return result


def require_fit(cfg: Any, **kwargs: Any) -> Plan:
    """`plan(cfg)`, raising PlanRefused (with the keys to change) when it cannot fit."""
    result = plan(cfg, **kwargs)
    if result.refusal:
        raise PlanRefused(result.refusal)
    return result


# ----------------------------------------------------------------------------
# What to change when it does not fit
# ----------------------------------------------------------------------------

def _with(cfg: Any, **dotted: Any) -> dict:
    """A plain-dict copy of cfg with dotted keys replaced (no Hydra needed)."""
    from omegaconf import DictConfig, OmegaConf

    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else _deep_copy(cfg)
    for key, value in dotted.items():
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return data


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _candidate_changes(cfg: Any) -> list[dict[str, Any]]:
    """Single changes worth trying, cheapest in throughput first."""
    layout = _layout_from(cfg)
    recompute = str(_select(cfg, "train.recompute", "none"))
    micro_batch = int(_select(cfg, "train.micro_batch_size", 1))
    per_node = int(_select(cfg, "cluster.gpus_per_node", 8) or 8)
    changes: list[dict[str, Any]] = []
    nodes = int(_select(cfg, "cluster.nodes", 0) or 0)
    if nodes and layout.world > nodes * per_node:
        # Too many GPUs for the cluster: the largest DP that fits it and divides the batch.
        global_batch = int(_select(cfg, "train.global_batch_size", micro_batch * layout.dp))
        for dp in range(nodes * per_node // (layout.tp * layout.pp), 0, -1):
            if global_batch % (micro_batch * dp) == 0:
                changes.append({"parallel.data_parallel_size": dp})
                break
    if _optimizer_kind(cfg) == "plain" and _zero_stage(cfg) is None:
        changes.append({"parallel.use_distributed_optimizer": True})
    if micro_batch > 1:
        changes.append({"train.micro_batch_size": 1})
    if recompute != "full":
        changes.append({"train.recompute": "full"})
    for factor in (2, 4, 8):
        tp = layout.tp * factor
        if tp <= per_node and layout.dp % factor == 0:
            changes.append({"parallel.tensor_model_parallel_size": tp, "parallel.data_parallel_size": layout.dp // factor,
                            "parallel.sequence_parallel": True})
    for factor in (2, 4, 8):
        if layout.dp % factor == 0:
            changes.append({"parallel.pipeline_model_parallel_size": layout.pp * factor,
                            "parallel.data_parallel_size": layout.dp // factor})
    return changes


def _smallest_layout(cfg: Any, **kwargs: Any) -> dict[str, Any] | None:
    """The fewest GPUs (then the least model parallelism) that fit, with full recompute allowed."""
    model = cfg["model"]
    layers = int(_select(model, "num_layers"))
    micro_batch = int(_select(cfg, "train.micro_batch_size", 1))
    global_batch = int(_select(cfg, "train.global_batch_size", micro_batch))
    per_node = int(_select(cfg, "cluster.gpus_per_node", 8) or 8)
    nodes = int(_select(cfg, "cluster.nodes", 1) or 1)
    samples = global_batch // micro_batch
    best: tuple[tuple[int, int], dict[str, Any]] | None = None
    tps = [t for t in (1, 2, 4, 8) if t <= per_node]
    pps = [p for p in range(1, layers + 1) if layers % p == 0]
    dps = [d for d in range(1, samples + 1) if samples % d == 0]
    for recompute in dict.fromkeys([str(_select(cfg, "train.recompute", "none")), "full"]):
        for tp in tps:
            for pp in pps:
                for dp in dps:
                    world = tp * pp * dp
                    if world > nodes * per_node or (best and (world, tp * pp) >= best[0]):
                        continue
                    change = {"parallel.tensor_model_parallel_size": tp, "parallel.pipeline_model_parallel_size": pp,
                              "parallel.data_parallel_size": dp, "parallel.sequence_parallel": tp > 1,
                              "parallel.virtual_pipeline_model_parallel_size": None, "train.recompute": recompute}
                    if plan(_with(cfg, **change), suggest=False, **kwargs).fits:
                        best = ((world, tp * pp), change)
                        break  # larger dp only adds GPUs
    return best[1] if best else None


def _overrides(change: Mapping[str, Any]) -> str:
    def show(v: Any) -> str:
        return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
    return " ".join(f"{k}={show(v)}" for k, v in change.items())


def suggest_changes(cfg: Any, **kwargs: Any) -> list[str]:
    """Hydra overrides that would make the config fit, each with its estimated peak."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):  # resolve once: the search below re-plans hundreds of variants
        cfg = OmegaConf.to_container(cfg, resolve=True)
    suggestions = []
    for change in _candidate_changes(cfg):
        candidate = plan(_with(cfg, **change), suggest=False, **kwargs)
        if candidate.fits and not candidate.problems:
            suggestions.append(f"{_overrides(change)}  (peak {candidate.peak_gib:.1f} GiB/GPU)")
    if not suggestions:
        smallest = _smallest_layout(cfg, **kwargs)
        if smallest:
            candidate = plan(_with(cfg, **smallest), suggest=False, **kwargs)
            suggestions.append(f"{_overrides(smallest)}  (peak {candidate.peak_gib:.1f} GiB/GPU, "
                               f"{candidate.layout.world} GPUs; no single change of micro batch, recompute, "
                               f"TP or PP on the current {_layout_from(cfg).world} GPU(s) fits)")
    return suggestions


def _refusal_message(result: Plan, suggestions: list[str]) -> str:
    lines = []
    if result.problems:
        lines.append("invalid layout:")
        lines += [f"  - {p}" for p in result.problems]
    if result.capacity_gib is not None and result.peak_gib > result.capacity_gib:
        worst = max(result.stages, key=lambda st: st.total)
        lines.append(f"does not fit: {result.model_name} with {result.layout.describe()}, micro batch "
                     f"{result.micro_batch_size}, recompute={result.recompute} needs about {result.peak_gib:.1f} GiB "
                     f"on the {worst.name} but {result.gpu_name or 'the GPU'} has {result.capacity_gib:g} GiB "
                     f"({result.capacity_source}).")
    if suggestions:
        lines.append("change it with one of these Hydra overrides (each fits on its own):")
        lines += [f"  {s}" for s in suggestions]
    elif not result.problems:
        lines.append("no layout on this cluster fits: lower train.micro_batch_size, set train.recompute=full, raise "
                     "parallel.tensor_model_parallel_size / parallel.pipeline_model_parallel_size, or add cluster.nodes.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# Printing
# ----------------------------------------------------------------------------

def _count(n: float) -> str:
    """1.08T, 52.82B, 7.5M: parameter counts at a readable scale."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}"
    return f"{n:.0f}"


def _gib(value: float) -> str:
    return f"{value / GIB:8.2f}"


def format_plan(result: Plan) -> str:
    """Markdown tables: the same text goes to the terminal and into docs/planning.md."""
    lay = result.layout
    counts = result.parameters
    lines = [
        f"# plan: model={result.model_name}  {lay.describe()}  cluster={result.cluster_name} "
        f"({result.gpu_name or 'no GPU'})",
        "",
        f"parameters {_count(counts['total'])} (vocab padded to {result.padded_vocab}; matmul N "
        f"{_count(counts['matmul'])}), model FLOPs/token {result.flops_per_token:.4g} "
        f"(6N + 6·L·s·d, causal, s={result.seq_length})",
        f"global batch {result.global_batch_size} x {result.seq_length} tokens, micro batch "
        f"{result.micro_batch_size}, {'bf16' if result.bf16 else 'fp32 (train.bf16=false)'}, recompute={result.recompute}, "
        f"flash attention={result.flash_attention}, "
        + (f"optimizer=DeepSpeed ZeRO-{result.zero_stage}" if result.zero_stage is not None
           else f"optimizer={result.optimizer}"),
    ]
    if result.fast_path is not None:
        fp = result.fast_path
        fused = [name for name, on in fp.fusions.items() if on]
        lines.append(f"trainer fast path on this GPU (pretrain/model/fast_path.py): spec={fp.spec}, "
                     f"attention={fp.attention}, fusions={'+'.join(fused) or 'none'}, overlap_grad_reduce="
                     f"{fp.overlap_grad_reduce}, overlap_param_gather={fp.overlap_param_gather}, grad reduce in "
                     f"{'fp32' if fp.grad_reduce_in_fp32 else 'bf16'}" + (f", fp8={fp.fp8}" if fp.fp8 else ""))
    lines += [
        "",
        "activations per layer and micro-batch (MiB): " + ", ".join(
            f"{mode} {value / 2**20:.1f}" for mode, value in result.activation_per_layer.items()),
        "",
        "| per GPU (GiB) | " + " | ".join(st.name for st in result.stages) + " |",
        "|---|" + "---:|" * len(result.stages),
    ]
    rows = [
        ("layers / parameters", lambda st: f"{st.layers} / {_count(st.parameters)}"),
        (f"weights ({'bf16' if result.bf16 else 'fp32, train.bf16=false'})", lambda st: _gib(st.weights)),
        ("gradients (fp32 main_grad)", lambda st: _gib(st.gradients)),
        (("optimizer (fp32 master + Adam m, v" if result.bf16 else "optimizer (Adam m, v") + (", /DP)" if result.optimizer == "distributed" or
                                                 result.zero_stage else ")"), lambda st: _gib(st.optimizer)),
        (f"activations ({result.recompute}, x in flight)", lambda st: f"{_gib(st.activations)} (x{st.in_flight:g})"),
        ("recompute working layer", lambda st: _gib(st.recompute_working)),
        ("logits + cross-entropy", lambda st: _gib(st.logits)),
        ("pipeline p2p buffers", lambda st: _gib(st.pipeline_buffers)),
        ("ZeRO-3 gather buffers", lambda st: _gib(st.zero3_gather)),
        ("workspace (CUDA ctx, NCCL, cuBLAS)", lambda st: _gib(st.workspace)),
        (f"fragmentation ({result.assumptions.fragmentation:.0%} of dynamic)", lambda st: _gib(st.fragmentation)),
        ("**total**", lambda st: f"**{st.total / GIB:.2f}**"),
    ]
    for label, render in rows:
        if label.startswith("ZeRO-3") and result.zero_stage != 3:
            continue
        lines.append(f"| {label} | " + " | ".join(render(st).strip() for st in result.stages) + " |")
    capacity = f"{result.capacity_gib:g} GiB" if result.capacity_gib is not None else "unknown (informational)"
    verdict = {True: "FITS", False: "DOES NOT FIT", None: "no GPU to check against"}[result.fits]
    lines += ["", f"peak {result.peak_gib:.2f} GiB of {capacity}: {verdict}"]

    step = result.step
    if step is not None:
        a = result.assumptions
        lines += [
            "",
            f"step time at {a.matmul_efficiency:.0%} of {result.peak_tflops:g} TFLOP/s, links at "
            f"{a.comm_efficiency:.0%} of nominal:",
            "",
            "| step time | value |",
            "|---|---:|",
            f"| micro-batches per step (per pipeline) | {step.micro_batches} |",
            f"| compute per micro-batch (slowest stage) | {step.compute_per_micro_batch * 1e3:.1f} ms |",
            f"| TP communication per micro-batch (not overlapped) | {step.tp_comm_per_micro_batch * 1e3:.1f} ms |",
            f"| pipeline bubble (p-1)/(m+p-1) | {step.bubble_fraction:.1%} |",
            f"| pipeline (m + p - 1 slots) | {step.pipeline:.2f} s |",
            f"| PP point-to-point | {step.pp_p2p:.2f} s |",
            f"| DP gradient reduce-scatter + param all-gather (exposed / total) | {step.dp_comm_exposed:.2f} / "
            f"{step.dp_comm_total:.2f} s |",
            f"| **step** | **{step.step:.2f} s** |",
            f"| tokens/s/GPU | {step.tokens_per_s_per_gpu:.0f} |",
            f"| model TFLOP/s/GPU | {step.model_tflops_per_gpu:.1f} |",
            f"| **MFU** (model FLOPs / dense BF16 peak) | **{step.mfu:.1%}** |",
        ]
    if result.refusal:
        lines += ["", "REFUSED:", result.refusal]
    return "\n".join(lines)


def _hydra_main() -> None:
    import hydra
    from omegaconf import DictConfig

    @hydra.main(config_path="../../configs", config_name="plan", version_base=None)
    def main(cfg: DictConfig) -> None:
        try:
            result = plan(cfg)
        except PlanRefused as error:
            print(f"pretrain.tools.fit_check: {error}", file=sys.stderr)
            sys.exit(REFUSED_EXIT_CODE)
        print(format_plan(result))
        if result.refusal:
            print(f"\npretrain.tools.fit_check: refused.\n{result.refusal}", file=sys.stderr)
            sys.exit(REFUSED_EXIT_CODE)

    main()


if __name__ == "__main__":
    _hydra_main()
