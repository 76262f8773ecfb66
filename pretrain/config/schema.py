"""The trainer config's schema: Hydra structured configs for ``configs/pretrain.yaml``.

``configs/pretrain.yaml`` starts its defaults list with ``pretrain_schema`` (registered
below in Hydra's ConfigStore), so every composed trainer config is typed: a value of the
wrong type (``train.micro_batch_size=abc``) or a key that is not here
(``train.micro_bach_size=4``) fails at compose time with the key named, and code reads
``cfg.train.micro_batch_size`` as an ``int`` without casts or ``OmegaConf.select``.

Adding a key: a field here (type + a comment saying what it is for and its units) and its
default in ``configs/pretrain.yaml`` (or the model/parallel/cluster preset), which stays
the user-facing, commented place to read defaults. The defaults below mirror the YAML
(tests/pretrain/config/test_schema.py checks they agree) so a partial config built in code
(:func:`typed`) gets the same values as a composed one.

String enums (``backend``, ``train.lr_decay_style``, ...) are plain ``str`` here; their
allowed values are checked in :mod:`pretrain.config.validate`, which names the key too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

SCHEMA_NAME = "pretrain_schema"


@dataclass
class DataConfig:
    """(pretrain/data.py)"""
    path: Optional[str] = None                    # tokenizer output's indexed/ dir holding manifest.json
    # {source: weight}: overrides the manifest's blend weights. Typed Any, not Dict[str, float]:
    # OmegaConf 2.3 cannot merge a `data.weights={a: 1.0}` override onto a typed dict that is null.
    weights: Optional[Any] = None
    train_samples: Optional[int] = None           # no longer shapes the training stream (per-source streams do
                                                  # not depend on the run's length, pretrain/mixture.py); kept for old configs


@dataclass
class SpikesConfig:
    """Loss-spike detection and recovery (pretrain/train/spike_policy.py, docs/spikes.md)."""
    enabled: bool = True              # conservative: 6σ over 128 good steps never fires on a healthy run
    window: int = 128                 # good steps in the rolling mean/σ
    min_history: int = 16             # no spike verdicts before this many good steps
    loss_sigma: float = 6.0           # a loss above mean + loss_sigma·σ is a spike
    grad_norm_sigma: float = 6.0      # same for the gradient norm
    min_loss_std: float = 0.02        # σ floor so a flat loss does not flag noise
    sustained_window: int = 0         # >0: flag a mean-loss rise over this many steps (0: off)
    sustained_rise: float = 0.05      # the relative rise of that mean that counts
    policies: List[str] = field(default_factory=lambda: ["skip_update", "rollback", "lower_lr"])
    # ^ the escalation ladder inside recovery_window
    act_on: List[str] = field(default_factory=lambda: ["nonfinite", "loss_spike", "sustained_rise"])
    # ^ + grad_norm_spike to act on those too (else logged only)
    rollback_steps_before: int = 100  # reload the newest checkpoint at least this many steps before the spike
    skip_batches: int = 200           # after a rollback, skip this many global batches past the spike's batch
    lr_factor: float = 0.5            # lower_lr: LR multiplier ...
    lr_steps: int = 500               # ... for this many steps
    max_recoveries: int = 5           # more flagged steps than this within recovery_window: stop (non-zero exit)
    recovery_window: int = 2000       # steps
    replay_skips: Optional[Any] = None  # a spikes.jsonl path (or [[start, end), ...] sample ranges) to skip again


@dataclass
class FaultConfig:
    """Fault detection (hang watchdog, straggler report: docs/fault_tolerance.md) and fault injection
    for tests (pretrain/train/callbacks/fault_injection.py, rank_faults.py)."""
    kind: str = "none"    # none | nan | lr_spike | corrupt_batch
    step: int = 0         # the 1-based step it hits (once)
    hang_timeout_s: float = 300.0     # a step that has not moved for this long is a hang: name the rank, exit 79 (0: no watchdog)
    slow_timeout_s: float = 1200.0    # the same for start-up, a process's first step, evaluation and checkpoint saves
    collective_timeout_s: float = 1800.0  # process group timeout: a collective that never returns fails after this
    straggler_interval: int = 100     # every N steps, name ranks whose CPU time per step is above straggler_factor x median (0: off)
    straggler_factor: float = 1.5
    inject_slow_rank: int = -1        # TEST-ONLY: this rank burns inject_delay_s of CPU per step (-1: none)
    inject_delay_s: float = 0.0
    inject_hang_rank: int = -1        # TEST-ONLY: this rank SIGSTOPs itself when step inject_hang_step begins (once per run dir)
    inject_hang_step: int = 0


@dataclass
class GpuConfig:
    """The GPU fast path (pretrain/model/fast_path.py, docs/gpu.md); a CPU run uses none of it."""
    spec: str = "auto"                    # auto (CUDA: TransformerEngine, error if it is broken) | transformer_engine | local
    fusions: bool = True                  # Megatron-LM's default kernel fusions, where the machine has the kernels
    grad_reduce_dtype: str = "fp32"       # fp32 | bf16: dtype of the DP gradient reduce-scatter/all-reduce
    tp_comm_overlap: bool = False         # TE userbuffer overlap of TP communication (TP>1, sequence parallel)
    fp8: Optional[str] = None             # null | hybrid | e4m3: TE FP8 GEMMs (compute capability >= 8.9, e.g. H100)
    fp8_recipe: str = "delayed"           # delayed | tensorwise | mxfp8 | blockwise


@dataclass
class StageLRConfig:
    """One stage's LR segment (pretrain/train/stages.py): train.lr's group goes from ``start`` at the
    stage's first step to ``end`` at its last; μP groups follow scaled by their peak / train.lr."""
    style: str = "constant"               # constant | linear | cosine | 1-sqrt (WSD's decay, MiniCPM)
    start: Optional[float] = None         # LR at the stage's first step (null: train.lr)
    end: Optional[float] = None           # LR at its last step (null: train.min_lr; constant: start)


@dataclass
class StageConfig:
    """A training stage (train.stages, docs/pretrain.md "Stages"): from ``start_step`` on, until the next."""
    start_step: int = MISSING             # 1-based first optimizer step of the stage
    name: Optional[str] = None            # for logs (null: stage<i>)
    weights: Optional[Any] = None         # {source: weight} from this stage on (null: the previous stage's)
    lr: Optional[StageLRConfig] = None    # the stage's LR segment (null: train.lr_decay_style's schedule)
    global_batch_size: Optional[int] = None  # from this stage on (null: train.global_batch_size / the ramp)


@dataclass
class TrainConfig:
    """Optimisation and the loop (pretrain/train/, pretrain/train/optim.py)."""
    micro_batch_size: int = 4             # sequences per forward/backward on one DP rank
    global_batch_size: int = 8            # = micro x DP x microbatches (gradient accumulation)
    train_iters: int = 300                # optimizer steps
    seed: int = 1234                      # init, data order, RNG tracker
    lr: float = 3.0e-3                    # peak LR (vector-like params under muP)
    lr_matrix: Optional[float] = None     # muP: matrix-like peak LR at the base width (null: lr)
    min_lr: float = 3.0e-4                # LR floor at the end of decay
    lr_warmup_iters: int = 30             # linear warmup steps
    lr_decay_iters: Optional[int] = None  # null: train_iters
    lr_decay_style: str = "cosine"        # cosine | wsd | constant
    wsd_decay_fraction: float = 0.2       # wsd: last fraction of decay iters anneals to min_lr
    weight_decay: float = 0.0             # Tele-FLM: 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1.0e-8
    clip_grad: float = 1.0                # global grad-norm clip (0: off)
    bf16: Optional[bool] = None           # null: BF16 where the run has GPUs, fp32 on CPU (fp32 master weights either way)
    fp32_on_gpu: bool = False             # allow train.bf16=false on GPUs (slow, 2x activation memory): must be asked for
    recompute: str = "none"               # none | selective | full (activation recomputation)
    overlap_grad_reduce: bool = True      # DDP bucketed grad reduce overlapped with backward
    overlap_param_gather: Optional[bool] = None  # distributed optimizer param all-gather overlapped with forward (null: on with CUDA)
    log_interval: int = 10                # console line every N steps (metrics.jsonl gets every step)
    eval_interval: int = 100              # held-out loss every N steps (0: never)
    eval_iters: int = 2                   # batches per held-out evaluation
    bpb_interval: int = 0                 # held-out loss/BPB per language and source every N steps; always at the end
    heldout_max_documents: Optional[int] = None  # score only the first N documents per held-out set (BPB: null)
    heldout_position_buckets: Optional[List[int]] = None  # inner edges of the held-out loss-by-position buckets (null: doubling from seq_length/64)
    z_loss: float = 0.0                   # PaLM z-loss coefficient (1e-4): + c·log²Z per token; 0: off
    gpu: GpuConfig = field(default_factory=GpuConfig)
    rampup_batch_size: Optional[List[int]] = None  # [start, increment, ramp samples]: megatron's batch ramp-up (null: off)
    rampup_lr_scaling: str = "none"       # during the ramp, LR x (batch/global_batch_size)^p: none (p=0) | sqrt | linear
    stages: List[StageConfig] = field(default_factory=list)  # the stage schedule (empty: one flat phase)
    spikes: SpikesConfig = field(default_factory=SpikesConfig)
    fault: FaultConfig = field(default_factory=FaultConfig)


@dataclass
class CheckpointConfig:
    """(pretrain/checkpoint.py)"""
    save_interval: int = 50               # steps between saves; 0: only at the end
    keep_last: int = 3                    # checkpoints kept (>= 1)
    async_save: bool = True               # write in the background while training continues
    # dp_reshardable: each rank writes its own optimizer shard (no gather); a resume may change DP only.
    # fully_reshardable: TP/PP/DP may change, but every save all-gathers each TP/PP slice's optimizer
    # state on every DP rank (DP x the shard in host RAM). docs/checkpointing.md
    optimizer_sharding: str = "dp_reshardable"
    fully_parallel: bool = True           # writes spread over DP ranks; loads read each shard once, then exchange
    load: Optional[str] = "auto"          # auto: resume from run_dir/checkpoints/latest | none | a checkpoint dir


@dataclass
class DeepSpeedConfig:
    """backend=deepspeed only (pretrain/train/deepspeed_step.py, docs/pretrain_deepspeed.md)."""
    zero_stage: int = 1                   # 0 | 1 | 2 | 3
    offload_optimizer: str = "none"       # none | cpu (ZeRO >= 1)
    torch_adam: Optional[bool] = None     # null: torch AdamW on CPU, DeepSpeed's fused Adam on GPU


@dataclass
class WandbConfig:
    mode: str = "offline"                 # offline | online | disabled (WANDB_MODE wins); online needs a key
    project: str = "teleflm-pretrain"
    name: Optional[str] = None            # run name (null: wandb picks one)


@dataclass
class LoggingConfig:
    """(pretrain/train/monitor.py)"""
    progress: bool = True                 # a progress bar on rank 0
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class MupConfig:
    """μP (pretrain/model/mup.py, docs/mup.md): widths of the proxy the hyperparameters were tuned on."""
    enabled: bool = False
    base_hidden_size: Optional[int] = None          # null: the model's own (width_mult = 1)
    base_ffn_hidden_size: Optional[int] = None
    base_num_attention_heads: Optional[int] = None
    # Not a field: mup.depth_scaled_block_output (block-output init std / sqrt(2 x layers)) is a
    # coord-check variant set in code (pretrain/scaling/widths.py), read with .get in mup.init_std,
    # so transferred configs (pretrain.scaling.transfer copies model.mup whole) do not grow it.


@dataclass
class RopeScalingConfig:
    """RoPE scaling for a long-context stage (pretrain/model/rope.py); the HF export writes the
    matching ``rope_parameters``. Changing ``model.rotary_base`` alone is the base-change method."""
    type: str = "none"                    # none | linear (position interpolation) | yarn
    factor: float = 1.0                   # context extension ratio (32k from 4k: 8)
    original_max_position_embeddings: Optional[int] = None  # yarn: the pre-extension context (null: seq_length / factor)
    beta_fast: float = 32.0               # yarn: rotations above which dimensions are not interpolated
    beta_slow: float = 1.0                # yarn: rotations below which dimensions are fully interpolated


@dataclass
class ModelConfig:
    """A Tele-FLM-architecture GPT (configs/model/*.yaml; pretrain/model/teleflm.py)."""
    name: str = MISSING
    num_layers: int = MISSING
    hidden_size: int = MISSING
    num_attention_heads: int = MISSING
    num_query_groups: Optional[int] = None          # KV groups (null: num_attention_heads, plain MHA)
    kv_channels: Optional[int] = None               # head dim (null: hidden / heads)
    ffn_hidden_size: int = MISSING                  # SwiGLU inner width
    vocab_size: int = MISSING                       # overridden by the tokenizer manifest's size
    make_vocab_size_divisible_by: int = 128         # padded to a multiple of this x TP
    padded_vocab_size: Optional[int] = None         # set by pretrain/config/resolve.py (a checkpoint's on resume)
    seq_length: int = MISSING                       # tokens per sequence
    rotary_base: int = 10000                        # RoPE θ
    norm_epsilon: float = 1.0e-5                    # RMSNorm ε
    init_method_std: float = MISSING                # matrix-like weights' init std (at the μP base width)
    embedding_init_std: Optional[float] = None      # vector-like weights' init std (null: init_method_std)
    truncated_normal_init: bool = False             # truncate the init normal at 2σ
    input_mult: float = 1.0                         # embedding output x input_mult
    output_mult: float = 1.0                        # logits x output_mult / width_mult
    embedding_grad_shrink: float = 1.0              # GLM-130B embedding gradient shrink; 1.0: off (docs/spikes.md)
    document_mask: bool = False                     # packed sequences: no attention across EOD (local SDPA spec only)
    rope_scaling: RopeScalingConfig = field(default_factory=RopeScalingConfig)  # long context (none: plain RoPE)
    mup: MupConfig = field(default_factory=MupConfig)


@dataclass
class ParallelConfig:
    """The layout (configs/parallel/*.yaml): world size = TP x PP x DP."""
    name: str = MISSING
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: Optional[int] = None   # interleaved pipeline chunks (null: off)
    data_parallel_size: int = 1
    sequence_parallel: bool = False                              # needs TP > 1
    use_distributed_optimizer: bool = True                       # shard optimizer state over DP


@dataclass
class PretrainConfig:
    """``python -m pretrain`` (configs/pretrain.yaml)."""
    run_dir: str = "runs/pretrain"        # metrics.jsonl, config.yaml, checkpoints/, summary.json, loss.png
    backend: str = "megatron"             # megatron | deepspeed
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    # Free-form: read by launch/ and pretrain.tools.fit_check (configs/cluster/*.yaml).
    cluster: Dict[str, Any] = field(default_factory=dict)
    # A grown stage (pretrain/growth, docs/growth.md): the runner writes source + ramp_iters + depth_position
    # + depth_init, the stage's first launch grows (pretrain/train/growth_start.py) and adds spec +
    # start_iteration; a config may also give the completed block directly. Null otherwise.
    growth: Optional[Any] = None
    # +experiment=mup_coord_check's settings (pretrain/tools/coord_check.py).
    coord_check: Optional[Any] = None
    # The planner's calibration knobs (configs/plan.yaml, pretrain/tools/fit_check.py::Calibration);
    # null: its defaults. The trainer's own fit check (pretrain/config/validate.py) reads them too.
    plan: Optional[Any] = None


def register() -> None:
    """Put :class:`PretrainConfig` in Hydra's ConfigStore as ``pretrain_schema`` (idempotent)."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=PretrainConfig)


def allow_new_keys(node: DictConfig) -> None:
    """Struct off on every nested dataclass node (the root's flag alone does not reach them)."""
    OmegaConf.set_struct(node, False)
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            allow_new_keys(child)


def typed(cfg: Any, strict: bool = True) -> DictConfig:
    """``cfg`` (a composed config, a resolved copy, a saved run_config.yaml, or a partial
    dict built in code) merged onto the schema: typed, with the schema's defaults for what
    it leaves out. Raises an OmegaConf ValidationError naming the key on a wrong type.
    Always a new, resolved copy (callers may mutate it). ``strict=False`` keeps keys the
    schema lacks instead of rejecting them (hand-built configs in tests and tools)."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    cfg = {k: v for k, v in dict(cfg).items() if k != "hydra"}
    base = OmegaConf.structured(PretrainConfig)
    if not strict:
        allow_new_keys(base)
    return OmegaConf.merge(base, cfg)


def typed_block(block: Any, schema: type) -> DictConfig:
    """One block (possibly partial, built in code) on its dataclass (:class:`ModelConfig`,
    :class:`TrainConfig`, ...); returned as is when it already is one. Keys the schema
    lacks are kept (not rejected) so code that only needs one block can take a hand-built one."""
    if isinstance(block, DictConfig) and OmegaConf.get_type(block) is schema:
        return block
    if isinstance(block, DictConfig):
        block = OmegaConf.to_container(block, resolve=True)
    base = OmegaConf.structured(schema)
    allow_new_keys(base)
    return OmegaConf.merge(base, block)


def typed_model(model_cfg: Any) -> DictConfig:
    return typed_block(model_cfg, ModelConfig)


def typed_train(train_cfg: Any) -> DictConfig:
    return typed_block(train_cfg, TrainConfig)


register()
