"""Reject a bad run configuration before any process group (or GPU hour) is spent.

Every rule returns a message naming the config key and the fix; all broken
rules are reported together, so a 896-GPU job fails once, not once per typo.
One rule is the planner's memory check (:func:`fit_errors`, pretrain/tools/fit_check.py).
"""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import DictConfig

from pretrain.model.rope import ROPE_SCALING_TYPES
from pretrain.train.stages import LR_STYLES, RAMPUP_LR_SCALING

LR_DECAY_STYLES = ("cosine", "wsd", "constant")
RECOMPUTE = ("none", "selective", "full")
BACKENDS = ("megatron", "deepspeed")  # pretrain/train/megatron_step.py, pretrain/train/deepspeed_step.py
WANDB_MODES = ("offline", "online", "disabled")


class ConfigError(ValueError):
    """One or more configuration rules failed; ``errors`` lists them."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("invalid pretraining config:\n  - " + "\n  - ".join(errors))


def parallel_errors(cfg: DictConfig, world_size: int | None) -> list[str]:
    errors = []
    m, p = cfg.model, cfg.parallel
    tp, pp, dp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.data_parallel_size
    vpp = p.virtual_pipeline_model_parallel_size
    for key, value in (("tensor_model_parallel_size", tp), ("pipeline_model_parallel_size", pp),
                       ("data_parallel_size", dp)):
        if value < 1:
            errors.append(f"parallel.{key}={value} must be >= 1")
    if errors:
        return errors
    heads, groups = m.num_attention_heads, m.num_query_groups or m.num_attention_heads
    if heads % tp:
        errors.append(f"model.num_attention_heads={heads} is not divisible by "
                      f"parallel.tensor_model_parallel_size={tp}: pick a TP that divides the head count")
    if groups % tp:
        errors.append(f"model.num_query_groups={groups} is not divisible by "
                      f"parallel.tensor_model_parallel_size={tp}: pick a TP that divides the KV group count")
    if m.ffn_hidden_size % tp:
        errors.append(f"model.ffn_hidden_size={m.ffn_hidden_size} is not divisible by "
                      f"parallel.tensor_model_parallel_size={tp}")
    stages = pp * (vpp or 1)
    if vpp and pp < 2:
        errors.append(f"parallel.virtual_pipeline_model_parallel_size={vpp} needs "
                      f"parallel.pipeline_model_parallel_size >= 2 (got {pp}): set it to null")
    if m.num_layers % stages:
        errors.append(f"model.num_layers={m.num_layers} is not divisible by pipeline stages "
                      f"(parallel.pipeline_model_parallel_size={pp} x "
                      f"parallel.virtual_pipeline_model_parallel_size={vpp or 1} = {stages}): "
                      "change PP/VPP or the layer count")
    if p.sequence_parallel and tp == 1:
        errors.append("parallel.sequence_parallel=true needs parallel.tensor_model_parallel_size > 1: "
                      "set parallel.sequence_parallel=false")
    if p.sequence_parallel and m.seq_length % tp:
        errors.append(f"model.seq_length={m.seq_length} must be divisible by "
                      f"parallel.tensor_model_parallel_size={tp} with sequence parallelism")
    if world_size is not None and world_size != tp * pp * dp:
        errors.append(f"world size {world_size} (WORLD_SIZE) != TP x PP x DP = {tp}x{pp}x{dp} = "
                      f"{tp * pp * dp}: set parallel.data_parallel_size={max(1, world_size // (tp * pp))} "
                      "or launch TPxPPxDP processes")
    return errors


def batch_errors(cfg: DictConfig) -> list[str]:
    errors = []
    t, p = cfg.train, cfg.parallel
    mbs, gbs, dp = t.micro_batch_size, t.global_batch_size, p.data_parallel_size
    if mbs < 1 or gbs < 1:
        return [f"train.micro_batch_size={mbs} and train.global_batch_size={gbs} must be >= 1"]
    if gbs % (mbs * max(dp, 1)):
        errors.append(f"train.global_batch_size={gbs} is not divisible by train.micro_batch_size={mbs} x "
                      f"parallel.data_parallel_size={dp} = {mbs * dp}: use a multiple of {mbs * dp}")
    else:
        num_micro = gbs // (mbs * max(dp, 1))
        pp, vpp = p.pipeline_model_parallel_size, p.virtual_pipeline_model_parallel_size
        if vpp and num_micro % pp:
            errors.append(f"interleaved pipeline: microbatches per step ({num_micro} = global / (micro x DP)) "
                          f"must be a multiple of parallel.pipeline_model_parallel_size={pp}: "
                          "raise train.global_batch_size")
    if t.train_iters < 1:
        errors.append(f"train.train_iters={t.train_iters} must be >= 1")
    errors += schedule_errors(cfg)
    if t.lr_decay_style not in LR_DECAY_STYLES:
        errors.append(f"train.lr_decay_style={t.lr_decay_style!r}: use one of {LR_DECAY_STYLES}")
    if t.lr_decay_style == "wsd" and not 0.0 < t.wsd_decay_fraction <= 1.0:
        errors.append(f"train.wsd_decay_fraction={t.wsd_decay_fraction} must be in (0, 1]")
    if t.recompute not in RECOMPUTE:
        errors.append(f"train.recompute={t.recompute!r}: use one of {RECOMPUTE}")
    if t.eval_interval and t.eval_iters < 1:
        errors.append("train.eval_iters must be >= 1 when train.eval_interval is set (or set eval_interval=0)")
    return errors


def schedule_errors(cfg: DictConfig) -> list[str]:
    """The LR schedule megatron's OptimizerParamScheduler (pretrain/train/optim.py::build_scheduler)
    would otherwise reject with a bare AssertionError (or torch's AdamW with a ValueError naming no key)."""
    errors = []
    t = cfg.train
    if t.lr <= 0:
        errors.append(f"train.lr={t.lr} must be > 0")
    if t.lr_matrix is not None and t.lr_matrix <= 0:
        errors.append(f"train.lr_matrix={t.lr_matrix} must be > 0 (or null: train.lr)")
    if t.min_lr < 0:
        errors.append(f"train.min_lr={t.min_lr} must be >= 0")
    if t.lr > 0 and t.min_lr >= 0 and t.min_lr > t.lr:
        errors.append(f"train.min_lr={t.min_lr} exceeds train.lr={t.lr}")
    if t.lr_warmup_iters < 0:
        errors.append(f"train.lr_warmup_iters={t.lr_warmup_iters} must be >= 0")
    if t.lr_decay_iters is not None and t.lr_decay_iters < 0:
        errors.append(f"train.lr_decay_iters={t.lr_decay_iters} must be >= 1 (or null: train.train_iters)")
    elif t.train_iters >= 1 and t.lr_warmup_iters >= 0:
        # optim.py: decay over lr_decay_iters, or train_iters when it is null (or 0)
        decay = (f"train.lr_decay_iters={t.lr_decay_iters}" if t.lr_decay_iters
                 else f"train.train_iters={t.train_iters} (train.lr_decay_iters is null)")
        if t.lr_warmup_iters >= (t.lr_decay_iters or t.train_iters):
            errors.append(f"train.lr_warmup_iters={t.lr_warmup_iters} must be smaller than the decay length "
                          f"{decay}: shorten the warm-up or lengthen the run")
        elif t.lr_warmup_iters > t.train_iters:
            errors.append(f"train.lr_warmup_iters={t.lr_warmup_iters} exceeds train.train_iters={t.train_iters}")
    if t.weight_decay < 0:
        errors.append(f"train.weight_decay={t.weight_decay} must be >= 0")
    if t.clip_grad < 0:
        errors.append(f"train.clip_grad={t.clip_grad} must be >= 0 (0: off)")
    for key in ("adam_beta1", "adam_beta2"):
        if not 0.0 <= t[key] < 1.0:
            errors.append(f"train.{key}={t[key]} must be in [0, 1)")
    if t.adam_eps < 0:
        errors.append(f"train.adam_eps={t.adam_eps} must be >= 0")
    return errors


def vocab_errors(cfg: DictConfig, manifest: dict | None) -> list[str]:
    errors = []
    m = cfg.model
    tp = cfg.parallel.tensor_model_parallel_size
    vocab = int(manifest["vocab_size"]) if manifest else m.vocab_size
    divisor = m.make_vocab_size_divisible_by
    if divisor < 1:
        errors.append(f"model.make_vocab_size_divisible_by={divisor} must be >= 1")
    padded = m.padded_vocab_size
    if padded is not None:
        if padded < vocab:
            errors.append(f"model.padded_vocab_size={padded} is smaller than the vocabulary ({vocab}): "
                          "raise it or set it to null")
        if padded % tp:
            errors.append(f"model.padded_vocab_size={padded} is not divisible by "
                          f"parallel.tensor_model_parallel_size={tp}: set it to null to re-pad")
    if manifest and m.vocab_size != vocab:
        errors.append(f"model.vocab_size={m.vocab_size} disagrees with the tokenizer manifest ({vocab}): "
                      "leave model.vocab_size to the manifest")
    return errors


def data_errors(cfg: DictConfig, manifest: dict | None) -> list[str]:
    data_path = cfg.data.path
    if not data_path:
        return ["data.path is not set: point it at the tokenizer output's 'indexed' directory"]
    if not Path(data_path).is_dir():
        return [f"data.path='{data_path}' does not exist"]
    if manifest is None:
        return [f"data.path='{data_path}' has no manifest.json: is it the tokenizer's 'indexed' directory?"]
    errors = []
    entries = dict(manifest.get("train") or {})
    if not entries:
        errors.append(f"data.path: the manifest in '{data_path}' lists no training sources")
    for split, group in (("heldout", (manifest.get("heldout") or {}).get("by_source") or {}),):
        entries.update({f"{split}/{k}": v for k, v in group.items()})
    for source, entry in sorted(entries.items()):
        for suffix in (".bin", ".idx"):
            if not Path(entry["prefix"] + suffix).is_file():
                errors.append(f"data.path: source '{source}' is missing {entry['prefix']}{suffix}")
    weights = cfg.data.weights
    if weights:
        unknown = set(weights) - set(manifest.get("train") or {})
        if unknown:
            errors.append(f"data.weights names unknown sources {sorted(unknown)}; "
                          f"the manifest has {sorted(manifest.get('train') or {})}")
    return errors + seq_length_errors(cfg, manifest)


def _tokens(entry: dict) -> int | None:
    tokens = entry.get("tokens") if isinstance(entry, dict) else None
    return int(tokens) if isinstance(tokens, (int, float)) else None


def seq_length_errors(cfg: DictConfig, manifest: dict) -> list[str]:
    """``model.seq_length`` against what the data can supply (the manifest's token counts).

    A GPTDataset sample is ``seq_length + 1`` consecutive tokens of one source's document stream,
    which wraps around (another epoch) when the source runs out. A source holding fewer tokens
    than one sample therefore repeats its whole text *inside every sample* (and megatron builds
    index arrays for the epochs it needs: a 4M-token sequence on a small corpus ran to 19.5 GB
    RSS). Refused for every training source with a positive weight, and, when the held-out loss
    is on (train.eval_interval > 0, which samples the held-out sources the same way), for every
    held-out source: that loss would be measured on repeated text. Held-out BPB
    (pretrain/eval/heldout.py) scores each document in its own windows, so short documents are
    fine there. Manifests without token counts are not checked.
    """
    errors = []
    seq = cfg.model.seq_length
    if seq < 1:
        return errors  # misc_errors reports it
    need = seq + 1
    overrides = dict(cfg.data.weights or {})
    for source, entry in sorted((manifest.get("train") or {}).items()):
        tokens = _tokens(entry)
        weight = overrides.get(source, entry.get("weight", entry.get("tokens", 1)))
        if tokens is None or float(weight) <= 0:
            continue
        if tokens < need:
            errors.append(f"model.seq_length={seq}: training source '{source}' holds only {tokens} tokens, "
                          f"less than one sample ({need}); every sample would repeat its whole text: lower "
                          f"model.seq_length or set data.weights.{source}=0")
    return errors + heldout_loss_errors(cfg, manifest)


# megatron's BlendedMegatronDatasetConfig.mid_level_dataset_surplus: each blended source is asked for
# this much more than its share; +1 for the greedy blending being a sample ahead of the share.
_BLEND_SURPLUS = 0.005


def heldout_loss_errors(cfg: DictConfig, manifest: dict) -> list[str]:
    """The held-out loss (``train.eval_interval`` > 0) must never count a token twice.

    Every evaluation reads the same ``train.eval_iters * train.global_batch_size`` samples of the valid
    split, a blend of the held-out sources weighted by their token counts (pretrain/data.py
    ``heldout_blend``), each sample ``model.seq_length`` predicted tokens. When a source's share of
    those samples needs more tokens than the source holds, megatron wraps it around into another
    epoch and the loss is measured on repeated text (seen with ``model.seq_length=16384`` on short
    held-out documents). Refused here, before any process group, naming the keys and the largest
    ``train.eval_iters`` that fits. Held-out BPB (pretrain/eval/heldout.py) scores each document once
    in its own windows, so it is not limited by this. Sources without token counts are not checked.
    """
    t = cfg.train
    seq = cfg.model.seq_length
    if not (t.eval_interval and t.eval_iters) or seq < 1 or t.global_batch_size < 1:
        return []
    by_source = (manifest.get("heldout") or {}).get("by_source") or {}
    sources = {name: _tokens(entry) for name, entry in sorted(by_source.items())}
    if any(tokens is None for tokens in sources.values()):
        return []
    sources = {name: tokens for name, tokens in sources.items() if tokens > 0}
    total = sum(sources.values())

    def samples_of(tokens: int, eval_iters: int) -> int:
        return math.ceil(math.ceil(eval_iters * t.global_batch_size * tokens / total) * (1 + _BLEND_SURPLUS)) + 1

    def fits(eval_iters: int) -> bool:
        return all(samples_of(n, eval_iters) * seq + 1 <= n for n in sources.values())

    errors = []
    for source, tokens in sources.items():
        samples = samples_of(tokens, t.eval_iters)
        if samples * seq + 1 <= tokens:
            continue
        best = next((e for e in range(t.eval_iters - 1, 0, -1) if fits(e)), 0)
        fix = (f"lower train.eval_iters to {best} or less, or model.seq_length" if best else
               "lower model.seq_length or train.global_batch_size")
        errors.append(
            f"model.seq_length={seq}: held-out source '{source}' holds only {tokens} tokens, but the held-out "
            f"loss (train.eval_interval={t.eval_interval}) reads {samples} samples of it in each evaluation "
            f"(its share of train.eval_iters={t.eval_iters} x train.global_batch_size={t.global_batch_size}), "
            f"{samples * seq + 1} tokens: it would be measured on repeated text; {fix}, or set "
            "train.eval_interval=0 (held-out BPB still scores every document)")
    return errors


def misc_errors(cfg: DictConfig) -> list[str]:
    errors = []
    if cfg.backend not in BACKENDS:
        errors.append(f"backend={cfg.backend!r}: use one of {BACKENDS}")
    if cfg.backend == "deepspeed":
        errors += deepspeed_errors(cfg)
    mode = cfg.logging.wandb.mode
    if mode not in WANDB_MODES:
        errors.append(f"logging.wandb.mode={mode!r}: use one of {WANDB_MODES}")
    if cfg.model.seq_length < 1:
        errors.append("model.seq_length must be >= 1")
    rs = cfg.model.rope_scaling
    if rs.type not in ROPE_SCALING_TYPES:
        errors.append(f"model.rope_scaling.type={rs.type!r}: use one of {ROPE_SCALING_TYPES}")
    elif rs.type != "none" and not rs.factor > 1.0:
        errors.append(f"model.rope_scaling.factor={rs.factor} must be > 1 with model.rope_scaling.type={rs.type}")
    if cfg.checkpoint.keep_last < 1:
        errors.append("checkpoint.keep_last must be >= 1 (the latest checkpoint is always kept)")
    errors += position_bucket_errors(cfg)
    errors += fault_detection_errors(cfg)
    return errors


def fault_detection_errors(cfg: DictConfig) -> list[str]:
    """The watchdog's and straggler report's keys (docs/fault_tolerance.md)."""
    f, errors = cfg.train.fault, []
    if f.hang_timeout_s < 0:
        errors.append(f"train.fault.hang_timeout_s={f.hang_timeout_s} must be >= 0 (0: no watchdog)")
    elif f.hang_timeout_s and f.slow_timeout_s < f.hang_timeout_s:
        errors.append(f"train.fault.slow_timeout_s={f.slow_timeout_s} must be >= train.fault.hang_timeout_s="
                      f"{f.hang_timeout_s} (it covers start-up, evaluation and checkpoint saves)")
    if not f.collective_timeout_s > 0:
        errors.append(f"train.fault.collective_timeout_s={f.collective_timeout_s} must be > 0")
    if f.straggler_interval < 0:
        errors.append(f"train.fault.straggler_interval={f.straggler_interval} must be >= 0 (0: off)")
    if not f.straggler_factor > 1.0:
        errors.append(f"train.fault.straggler_factor={f.straggler_factor} must be > 1")
    if f.inject_delay_s < 0:
        errors.append(f"train.fault.inject_delay_s={f.inject_delay_s} must be >= 0")
    return errors


def position_bucket_errors(cfg: DictConfig) -> list[str]:
    """``train.heldout_position_buckets`` before launch, not at the first held-out evaluation."""
    from pretrain.eval.positions import position_edges

    boundaries = cfg.train.get("heldout_position_buckets")
    if boundaries is None or cfg.model.seq_length < 1:
        return []
    try:
        position_edges(int(cfg.model.seq_length), list(boundaries))
    except ValueError as err:
        return [str(err)]
    return []


def deepspeed_errors(cfg: DictConfig) -> list[str]:
    """backend=deepspeed (pretrain/train/deepspeed_step.py): ZeRO over a TP x DP grid, no pipeline."""
    errors = []
    pp = cfg.parallel.pipeline_model_parallel_size
    if pp != 1:
        errors.append(f"parallel.pipeline_model_parallel_size={pp}: backend=deepspeed runs PP=1 only "
                      "(TP x DP with ZeRO); set it to 1 or use backend=megatron for pipelining")
    if cfg.parallel.virtual_pipeline_model_parallel_size:
        errors.append("parallel.virtual_pipeline_model_parallel_size must be null with backend=deepspeed")
    stage = cfg.deepspeed.zero_stage
    if stage not in (0, 1, 2, 3):
        errors.append(f"deepspeed.zero_stage={stage!r}: use 0, 1, 2 or 3")
    offload = cfg.deepspeed.offload_optimizer
    if offload not in ("none", "cpu"):
        errors.append(f"deepspeed.offload_optimizer={offload!r}: use none or cpu")
    elif offload == "cpu" and stage == 0:
        errors.append("deepspeed.offload_optimizer=cpu needs deepspeed.zero_stage >= 1")
    if cfg.growth is not None:
        errors.append("growth stages (cfg.growth) run on backend=megatron only")
    if cfg.train.spikes.enabled and "grad_norm_spike" in cfg.train.spikes.act_on:
        errors.append("train.spikes.act_on: grad_norm_spike cannot be acted on with backend=deepspeed "
                      "(DeepSpeed computes the gradient norm inside its step, after the update); remove it "
                      "(grad-norm spikes are still logged) or use backend=megatron")
    return errors


def precision_errors(cfg: DictConfig, on_gpu: bool) -> list[str]:
    """FP32 on GPUs is never a default: it doubles activation memory and runs the GEMMs at a
    fraction of BF16's rate (a 52B run does not fit at all). ``train.bf16=false`` there has to be
    meant, said by ``train.fp32_on_gpu=true``."""
    if on_gpu and cfg.train.bf16 is False and not cfg.train.fp32_on_gpu:
        return ["train.bf16=false on GPUs trains in fp32 (2x activation memory, a fraction of BF16's "
                "throughput): drop it (BF16 is the GPU default) or set train.fp32_on_gpu=true if fp32 is meant"]
    return []


def fit_errors(cfg: DictConfig) -> list[str]:
    """The planner's verdict on this run's memory, so an impossible plan fails here, in seconds,
    and not at the first OOM on hundreds of GPUs.

    Memory and peak come from the real device when CUDA is present, else from the cluster preset
    (cluster.gpu.memory_gb); fusions and overlaps from the fast path the trainer would choose on that
    machine. With no GPU anywhere (a CPU run, cluster=local) the plan is informational: no error.
    """
    from pretrain.tools.fit_check import PlanRefused, cuda_device, local_machine, require_fit

    device = cuda_device()    # (name, GiB, peak) from torch.cuda.get_device_properties, or None
    name, capacity, peak = device if device else (None, None, None)
    machine = local_machine() if device else None   # None: the cluster preset's GPU
    try:
        require_fit(cfg, capacity_gib=capacity, peak_tflops=peak, device_name=name, machine=machine)
    except PlanRefused as refusal:
        indented = "\n".join(f"      {line}" for line in str(refusal).splitlines())
        return [f"pretrain.tools.fit_check refuses this plan (pretrain/tools/fit_check.py, docs/planning.md):\n{indented}"]
    return []


def stage_errors(cfg: DictConfig, manifest: dict | None) -> list[str]:
    """``train.stages`` and ``train.rampup_*`` (pretrain/train/stages.py): each error names the stage's key."""
    t, p = cfg.train, cfg.parallel
    errors: list[str] = []
    unit = max(t.micro_batch_size, 1) * max(p.data_parallel_size, 1)
    pp, vpp = p.pipeline_model_parallel_size, p.virtual_pipeline_model_parallel_size

    def batch_rule(key: str, value: int) -> None:
        if value < 1 or value % unit:
            errors.append(f"{key}={value} must be a positive multiple of train.micro_batch_size x "
                          f"parallel.data_parallel_size = {unit}")
        elif vpp and (value // unit) % pp:
            errors.append(f"{key}={value}: interleaved pipeline needs microbatches per step "
                          f"({value // unit}) to be a multiple of parallel.pipeline_model_parallel_size={pp}")

    ramp = t.rampup_batch_size
    if ramp is not None:
        if len(ramp) != 3:
            errors.append(f"train.rampup_batch_size={list(ramp)}: give [start, increment, ramp samples]")
        else:
            start, increment, samples = (int(x) for x in ramp)
            if increment < 1 or samples < 1 or not 0 < start < t.global_batch_size:
                # ramp samples 0 divides by zero in megatron's calculator
                errors.append(f"train.rampup_batch_size={list(ramp)}: need 0 < start < train.global_batch_size="
                              f"{t.global_batch_size}, increment >= 1, ramp samples >= 1")
            elif (t.global_batch_size - start) % increment:
                errors.append(f"train.rampup_batch_size={list(ramp)}: train.global_batch_size - start "
                              f"({t.global_batch_size - start}) must be a multiple of the increment ({increment})")
            else:
                for value in range(start, t.global_batch_size, increment):
                    batch_rule("train.rampup_batch_size (a batch size of the ramp)", value)
    if t.rampup_lr_scaling not in RAMPUP_LR_SCALING:
        errors.append(f"train.rampup_lr_scaling={t.rampup_lr_scaling!r}: use one of {tuple(RAMPUP_LR_SCALING)}")
    sources = set((manifest or {}).get("train") or {})
    starts = []
    for i, stage in enumerate(t.stages or []):
        key = f"train.stages[{i}]"
        start = stage.start_step
        starts.append(start)
        if start < 1:  # one after train.train_iters is fine: a later call with more iterations reaches it
            errors.append(f"{key}.start_step={start} must be >= 1 (steps are 1-based)")
        if stage.weights:
            weights = dict(stage.weights)
            unknown = set(weights) - sources if manifest is not None else set()
            if unknown:
                errors.append(f"{key}.weights names unknown sources {sorted(unknown)}; known: {sorted(sources)}")
            if any(float(w) < 0 for w in weights.values()) or sum(float(w) for w in weights.values()) <= 0:
                errors.append(f"{key}.weights={weights}: weights must be >= 0 with a positive sum")
        if stage.global_batch_size is not None:
            batch_rule(f"{key}.global_batch_size", stage.global_batch_size)
            if cfg.backend == "deepspeed":
                errors.append(f"{key}.global_batch_size: backend=deepspeed keeps one batch size "
                              "(its engine fixes gradient accumulation); use backend=megatron")
        if stage.lr is not None:
            if stage.lr.style not in LR_STYLES:
                errors.append(f"{key}.lr.style={stage.lr.style!r}: use one of {LR_STYLES}")
            for end in ("start", "end"):
                value = stage.lr[end]
                if value is not None and value < 0:
                    errors.append(f"{key}.lr.{end}={value} must be >= 0")
    if len(set(starts)) != len(starts) or starts != sorted(starts):
        errors.append(f"train.stages: start_step values {starts} must be strictly increasing")
    if ramp is not None and cfg.backend == "deepspeed":
        errors.append("train.rampup_batch_size: backend=deepspeed keeps one batch size; use backend=megatron")
    return errors


def growth_source_errors(cfg: DictConfig) -> list[str]:
    """A grown stage that has not grown yet must point ``growth.source`` at a finalised checkpoint.

    Otherwise the mistake surfaced only when every rank of the stage had started and reached
    ``growth_start`` (minutes of allocation on a cluster). Once the stage has grown, its own
    checkpoints carry it and the source is no longer read.
    """
    from pretrain.config.resolve import RUN_CONFIG, growth_source, latest_checkpoint

    source = growth_source(cfg)
    if source is None or latest_checkpoint(cfg.run_dir) is not None:  # as growth_start decides
        return []
    if not (source / RUN_CONFIG).is_file():
        return [f"growth.source={source}: not a finalised trainer checkpoint (no {RUN_CONFIG}); "
                "point it at an iter_* directory of the previous stage"]
    return []


def config_errors(cfg: DictConfig, world_size: int | None, manifest: dict | None,
                  check_data: bool = True, on_gpu: bool | None = None) -> list[str]:
    """``on_gpu``: whether the ranks train on GPUs (None: ask, :func:`runs_on_gpu`)."""
    from pretrain.config.resolve import runs_on_gpu

    on_gpu = runs_on_gpu(cfg) if on_gpu is None else on_gpu
    errors = parallel_errors(cfg, world_size) + batch_errors(cfg) + vocab_errors(cfg, manifest)
    errors += precision_errors(cfg, on_gpu)
    errors += misc_errors(cfg) + stage_errors(cfg, manifest if check_data else None)
    if not errors and cfg.model.seq_length >= 1:   # the planner needs a valid layout to say anything useful
        errors += fit_errors(cfg)
    if check_data:  # the file-system rules
        errors += data_errors(cfg, manifest) + growth_source_errors(cfg)
    return errors


def validate(cfg: DictConfig, world_size: int | None, manifest: dict | None,
             check_data: bool = True, on_gpu: bool | None = None) -> None:
    """Raise :class:`ConfigError` listing every broken rule; return quietly otherwise."""
    errors = config_errors(cfg, world_size, manifest, check_data, on_gpu)
    if errors:
        raise ConfigError(errors)
