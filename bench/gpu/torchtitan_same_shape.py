"""torchtitan (0.3.0, pinned) training our ~1B Tele-FLM shape: the baseline of bench/gpu.

    python bench/gpu/torchtitan_same_shape.py --check-only          # build the config, compare parameter counts
    python bench/gpu/torchtitan_same_shape.py --cpu-check           # tiny shape, 6 steps on CPU (gloo)
    python bench/gpu/torchtitan_same_shape.py --cpu-check --cpu-bf16  # the same in BF16 mixed precision
    python bench/gpu/torchtitan_same_shape.py --out tt.json         # the benchmark (one GPU, BF16)

The model is a torchtitan Llama-3 config with exactly the shape of ``configs/model/1b.yaml``
(over ``52b.yaml``): 24 layers, hidden 2048, 16 heads of 128 with 16 KV heads (MHA),
SwiGLU FFN 5504, vocabulary 80000 untied, RMSNorm eps 1e-5, RoPE theta 10000 without
Llama-3 frequency scaling, no biases. What differs from our model is what cannot change
the matmul work: initialisation and the muP multipliers (elementwise), and torchtitan's
fused QKV projection (the same weights in one matrix).

Training uses torchtitan's own single-GPU defaults where we have no reason to differ:
FSDP2 applied with shard degree 1 for its mixed-precision policy (BF16 parameters and
compute, FP32 master weights and gradient reduction), AdamW, the chunked cross-entropy
loss, CUDA graphs on, torch.compile off unless ``--compile``. Activation checkpointing is
off, because ours runs with ``train.recompute=none``: both sides do the same work. The
micro batch (``local_batch_size``) and global batch (gradient accumulation) and the
sequence length are ours.

Data: uniform random token ids over the 80k vocabulary, generated in-process, one
document per 4096-token sample (positions 0..4095, so torchtitan's document-causal mask
is the plain causal mask our side uses). No tokenizer files and no Hugging Face
datasets are read: the GPU machines have no network.

Reported: per-step tokens/s (torchtitan's ``throughput(tps)``), torchtitan's own TFLOP/s
and MFU (its FLOP formula and peak table), and TFLOP/s and MFU recomputed with OUR
formula (``pretrain/tools/flops.py``: 6N over the matmul weights + causal attention,
dense BF16 peak), so the row is comparable with ``bench/gpu/throughput.py``'s. (torchtitan
counts attention over the full s x s matrix, 12*L*s*d where we count the causal half:
10.69 vs 9.48 GFLOP per token at the 1B shape, so its own MFU reads 12.8% higher.) The JSON
result has the same keys as a throughput.py result.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import types
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TORCHTITAN_VERSION = "0.3.0"
EOD_ID = 2


# ----------------------------------------------------------------------------- our shape
def our_model_cfg(name: str = "1b") -> dict:
    """configs/model/<name>.yaml over its defaults (52b.yaml), as a plain dict."""
    from omegaconf import OmegaConf

    def load(n: str):
        cfg = OmegaConf.load(REPO / "configs" / "model" / f"{n}.yaml")
        defaults = [d for d in cfg.pop("defaults", []) if d != "_self_"]
        merged = OmegaConf.create()
        for d in defaults:
            merged = OmegaConf.merge(merged, load(d))
        return OmegaConf.merge(merged, cfg)

    return OmegaConf.to_container(load(name), resolve=True)


def our_counts(model_cfg: dict, seq_len: int) -> dict:
    from pretrain.tools.flops import model_flops_per_token, model_padded_vocab, parameter_count

    padded = model_padded_vocab(model_cfg, 1)
    return {"padded_vocab": padded, "params": parameter_count(model_cfg, padded),
            "flops_per_token": model_flops_per_token(model_cfg, seq_len, padded)}


# ----------------------------------------------------------------------------- torchtitan import
def import_torchtitan(cpu: bool = False):
    """Import torchtitan; on a CPU-only torch, work around what only a GPU build has.

    * torch's CPU wheels ship no triton, and torchtitan imports its expert-parallel
      triton kernels (``distributed/minimal_async_ep/kernels.py``) at import time even for
      dense models. Those kernels are MoE-only; a stand-in module that raises if called
      replaces them. Not done when triton is importable (every CUDA torch wheel).
    * torchtitan picks its device as ``torch._utils._get_available_device_type() or
      "cuda"``; with ``cpu=True`` it is made to pick "cpu" (gloo, torch.cpu), and its
      device memory monitor (CUDA memory stats) is replaced by one that reports zeros and
      the after-step-1 timeout change (a barrier with a CUDA device id) is skipped.
    """
    import torch

    if cpu:
        import torch._utils as tu

        tu._get_available_device_type = lambda: "cpu"
    try:
        import triton  # noqa: F401
    except ImportError:
        name = "torchtitan.distributed.minimal_async_ep.kernels"
        stub = types.ModuleType(name)

        def _missing(attr: str):
            if attr.startswith("__"):
                raise AttributeError(attr)

            def unavailable(*args, **kwargs):
                raise RuntimeError(f"{name}.{attr}: triton is not installed (CPU torch)")
            return unavailable

        stub.__getattr__ = _missing
        sys.modules[name] = stub
    import torchtitan

    if cpu:
        cpu_memory_monitor()
    version = getattr(torchtitan, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("torchtitan")
    if version != TORCHTITAN_VERSION:
        raise SystemExit(f"torchtitan {version} is installed; this launcher is written against "
                         f"{TORCHTITAN_VERSION} (pinned in bench/gpu/run.sh)")
    del torch
    return torchtitan


def cpu_memory_monitor() -> None:
    """torchtitan's DeviceMemoryMonitor reads CUDA-style memory stats that torch.cpu lacks."""
    import torchtitan.components.metrics as metrics

    class CpuMemoryMonitor:
        device_name = "cpu"
        device_capacity_gib = 0.0

        def get_peak_stats(self):
            return metrics.DeviceMemStats(0.0, 0.0, 0.0, 0.0, 0, 0)

        def reset_peak_stats(self) -> None:
            pass

    metrics.build_device_memory_monitor = CpuMemoryMonitor

    import torchtitan.distributed.utils as dist_utils

    # After step 1 torchtitan tightens the process-group timeouts behind a barrier with
    # device_ids=[torch.cpu.current_device()] == ["cpu"], which gloo's BarrierOptions refuses.
    dist_utils.set_pg_timeouts = lambda *args, **kwargs: None


# ----------------------------------------------------------------------------- model spec
def model_spec_for(model_cfg: dict, seq_len: int, attn_backend: str):
    """A torchtitan llama3 ModelSpec with our shape, registered as flavor ``teleflm_<name>``."""
    import torchtitan.models.llama3 as l3
    from torchtitan.distributed.pipeline_parallel import pipeline_llm
    from torchtitan.models.common import ComplexRoPE, Embedding, Linear, RMSNorm
    from torchtitan.models.common.attention import ScaledDotProductAttention
    from torchtitan.protocols.model_spec import ModelSpec

    from pretrain.tools.flops import model_padded_vocab

    dim = int(model_cfg["hidden_size"])
    heads = int(model_cfg["num_attention_heads"])
    head_dim = int(model_cfg.get("kv_channels") or dim // heads)
    if head_dim * heads != dim:
        raise ValueError(f"torchtitan's llama3 needs heads * head_dim == dim, got {heads} x {head_dim} != {dim}")
    vocab = model_padded_vocab(model_cfg, 1)  # the logits matmul our side runs (80000 is already a multiple of 128)
    eps = float(model_cfg.get("norm_epsilon", 1e-5))
    norm = RMSNorm.Config(normalized_shape=dim, eps=eps, param_init=l3._NORM_INIT)

    def flavor(attn_backend: str, tp_gemm_backend: str = "default"):
        layers = l3._build_llama3_layers(
            fuse_qkv=True, n_layers=int(model_cfg["num_layers"]), dim=dim, n_heads=heads,
            n_kv_heads=int(model_cfg.get("num_query_groups") or heads),
            hidden_dim=int(model_cfg["ffn_hidden_size"]),
            rope=ComplexRoPE.Config(dim=head_dim, max_seq_len=seq_len,
                                    theta=float(model_cfg.get("rotary_base", 10000)), scaling="none"),
            attn_backend="flex" if attn_backend == "sdpa" else attn_backend, tp_gemm_backend=tp_gemm_backend)
        for layer in layers:
            layer.attention_norm.eps = eps
            layer.ffn_norm.eps = eps
            if attn_backend == "sdpa":
                # torchtitan's LM registry refuses SDPA because it cannot take a per-document
                # mask; our samples are one document each, so is_causal is the same mask.
                layer.attention.inner_attention = ScaledDotProductAttention.Config()
        return l3.Llama3Model.Config(
            dim=dim, vocab_size=vocab, enable_weight_tying=False,
            tok_embeddings=Embedding.Config(num_embeddings=vocab, embedding_dim=dim,
                                            param_init=l3._EMBEDDING_INIT),
            norm=norm,
            lm_head=Linear.Config(in_features=dim, out_features=vocab, param_init=l3._output_linear_init(dim)),
            layers=layers)

    name = f"teleflm_{model_cfg.get('name', 'custom')}"
    l3.llama3_configs[name] = flavor  # registered next to torchtitan's own flavors
    return ModelSpec(name="llama3", flavor=name, model=flavor(attn_backend),
                     parallelize_fn=l3.parallelize_llama, pipelining_fn=pipeline_llm,
                     post_optimizer_build_fn=None, state_dict_adapter=l3.Llama3StateDictAdapter)


def torchtitan_param_count(spec) -> int:
    """Parameters of the built model (on the meta device: no memory)."""
    import torch

    with torch.device("meta"):
        model = spec.model.build()
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- data
def data_classes():
    """A tokenizer stand-in and a random-token dataloader in torchtitan's component protocol."""
    import torch
    from torch.utils.data import IterableDataset
    from torchtitan.components.dataloader import ParallelAwareDataloader
    from torchtitan.components.tokenizer import BaseTokenizer

    class RandomTokenizer(BaseTokenizer):
        """No files: the data is already token ids. Only the vocabulary size is real."""

        @dataclass(kw_only=True, slots=True)
        class Config(BaseTokenizer.Config):
            vocab_size: int = 80_000

        def __init__(self, config: Config, *, tokenizer_path: str = ""):
            super().__init__()
            self.vocab_size = config.vocab_size
            self.eos_id = EOD_ID
            self.bos_id = 1

        def encode(self, *args, **kwargs) -> list[int]:
            raise NotImplementedError("random-token benchmark: nothing to encode")

        def decode(self, *args, **kwargs) -> str:
            raise NotImplementedError("random-token benchmark: nothing to decode")

        def get_vocab_size(self) -> int:
            return self.vocab_size

    class RandomTokens(IterableDataset):
        """Endless seq_len samples of uniform ids in [3, vocab), one document each (EOD last)."""

        def __init__(self, vocab: int, seq_len: int, seed: int):
            self.vocab, self.seq_len, self.seed = vocab, seq_len, seed

        def __iter__(self):
            gen = torch.Generator().manual_seed(self.seed)
            positions = torch.arange(self.seq_len, dtype=torch.long)
            while True:
                doc = torch.randint(3, self.vocab, (self.seq_len + 1,), generator=gen, dtype=torch.long)
                doc[-1] = EOD_ID
                yield {"input": doc[:-1], "positions": positions}, doc[1:]

    class RandomTokensDataLoader(ParallelAwareDataloader):
        @dataclass(kw_only=True, slots=True)
        class Config(ParallelAwareDataloader.Config):
            dataset: str = "random_tokens"
            vocab_size: int = 80_000
            seed: int = 0

        def __init__(self, config: Config, *, dp_world_size: int, dp_rank: int, tokenizer, seq_len: int,
                     local_batch_size: int, snapshot_every_n_steps: int | None = None, **kwargs):
            dataset = RandomTokens(config.vocab_size, seq_len, config.seed + dp_rank)
            super().__init__(dataset, dp_rank=dp_rank, dp_world_size=dp_world_size,
                             batch_size=local_batch_size, num_workers=0,
                             snapshot_every_n_steps=snapshot_every_n_steps)

    return RandomTokenizer, RandomTokensDataLoader


# ----------------------------------------------------------------------------- trainer config
def trainer_config(spec, *, vocab: int, seq_len: int, micro_batch: int, global_batch: int, steps: int,
                   dump_folder: Path, compile_model: bool, cuda_graphs: bool, bf16: bool = True):
    from torchtitan.components.checkpoint import CheckpointManager
    from torchtitan.components.loss import ChunkedLossWrapper, CrossEntropyLoss
    from torchtitan.components.metrics import MetricsProcessor
    from torchtitan.components.optimizer import LRSchedulersContainer, default_adamw
    from torchtitan.components.validate import Validator
    from torchtitan.config import CompileConfig, ParallelismConfig, TrainingConfig
    from torchtitan.trainer import Trainer

    RandomTokenizer, RandomTokensDataLoader = data_classes()
    return Trainer.Config(
        model_spec=spec,
        hf_assets_path=str(dump_folder / "no-assets"),
        dump_folder=str(dump_folder),
        tokenizer=RandomTokenizer.Config(vocab_size=vocab),
        dataloader=RandomTokensDataLoader.Config(vocab_size=vocab),
        loss=ChunkedLossWrapper.Config(loss_fn=CrossEntropyLoss.Config(global_vocab_size=vocab)),
        optimizer=default_adamw(lr=3e-4),
        lr_scheduler=LRSchedulersContainer.Config(warmup_steps=2, decay_ratio=None),
        training=TrainingConfig(local_batch_size=micro_batch, global_batch_size=global_batch, seq_len=seq_len,
                                steps=steps, disable_cuda_graphs=not cuda_graphs,
                                mixed_precision_param="bfloat16" if bf16 else "float32"),
        parallelism=ParallelismConfig(),
        metrics=MetricsProcessor.Config(log_freq=1, enable_tensorboard=False, enable_wandb=False),
        checkpoint=CheckpointManager.Config(enable=False),
        activation_checkpoint=None,
        compile=CompileConfig(enable=compile_model, components=["model", "loss"]),
        validator=Validator.Config(enable=False),
    )


class CapturingLogger:
    """Takes the place of torchtitan's metric logger (BaseLogger protocol): keeps every row."""

    def __init__(self):
        self.rows: list[dict] = []

    def log(self, metrics: dict, step: int) -> None:
        self.rows.append({"step": step, **metrics})

    def log_validation(self, metrics: dict, step: int) -> None:
        pass

    def close(self) -> None:
        pass


def single_process_env() -> None:
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29500 + os.getpid() % 1000)}.items():
        os.environ.setdefault(key, value)


def run(args, model_cfg: dict, name: str) -> dict:
    cpu = args.cpu_check
    import_torchtitan(cpu=cpu)
    import torch
    from torchtitan.tools.logging import init_logger

    from pretrain.tools.flops import mfu as our_mfu
    from pretrain.tools.flops import peak_bf16_tflops_for

    init_logger()
    single_process_env()
    counts = our_counts(model_cfg, args.seq_len)
    spec = model_spec_for(model_cfg, args.seq_len, args.attn_backend)
    config = trainer_config(spec, vocab=counts["padded_vocab"], seq_len=args.seq_len, micro_batch=args.micro_batch,
                            global_batch=args.global_batch, steps=args.steps, dump_folder=args.work / name,
                            compile_model=args.compile, cuda_graphs=not args.disable_cuda_graphs and not cpu,
                            bf16=not args.fp32)
    trainer = config.build()
    capture = CapturingLogger()
    trainer.metrics_processor.logger = capture
    try:
        trainer.train()
    finally:
        trainer.close()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not cpu else "cpu"
    peak = peak_bf16_tflops_for(device)
    steady = [r for r in capture.rows if r["step"] > args.warmup]

    def median(key: str) -> float | None:
        values = [r[key] for r in steady if r.get(key) is not None]
        return statistics.median(values) if values else None

    tps = median("throughput(tps)")
    ours_tflops = tps * counts["flops_per_token"] / 1e12 if tps is not None else None
    return {
        "name": name, "framework": f"torchtitan {TORCHTITAN_VERSION}",
        "overrides": [f"attn_backend={args.attn_backend}", f"compile={args.compile}",
                      f"cuda_graphs={not args.disable_cuda_graphs and not cpu}", "activation_checkpoint=none",
                      f"local_batch_size={args.micro_batch}", f"global_batch_size={args.global_batch}",
                      f"seq_len={args.seq_len}", "mixed_precision_param=" + ("float32" if args.fp32 else "bfloat16")],
        "steps_measured": len(steady),
        "tokens_per_s": tps,
        # comparable with throughput.py: our FLOP formula and dense BF16 peak
        "tflops_per_gpu": ours_tflops,
        "mfu": our_mfu(tps, counts["flops_per_token"], peak) if (tps is not None and peak) else None,
        "flops_formula": "ours (pretrain/tools/flops.py)",
        # torchtitan's own figures, as it logs them (its FLOP formula and peak table)
        "torchtitan_tflops": median("tflops"),
        "torchtitan_mfu": (median("mfu(%)") / 100) if median("mfu(%)") is not None else None,
        "loss_first_last": [capture.rows[0]["loss_metrics/global_avg_loss"],
                            capture.rows[-1]["loss_metrics/global_avg_loss"]] if capture.rows else None,
        "params": counts["params"]["total"], "device": device,
        "fast_path": None, "precision": "bf16 (FSDP2 mixed precision)" if not args.fp32 else "fp32",
    }


def check(model_cfg: dict, seq_len: int, attn_backend: str, cpu: bool) -> dict:
    """Build the torchtitan config of our shape; its parameter count must equal ours exactly."""
    import_torchtitan(cpu=cpu)
    counts = our_counts(model_cfg, seq_len)
    spec = model_spec_for(model_cfg, seq_len, attn_backend)
    theirs = torchtitan_param_count(spec)
    ours = counts["params"]["total"]
    result = {"model": model_cfg.get("name"), "torchtitan_params": theirs, "our_params": ours,
              "our_matmul_params": counts["params"]["matmul"], "our_flops_per_token": counts["flops_per_token"],
              "match": theirs == ours}
    if theirs != ours:
        raise SystemExit(f"parameter counts differ: torchtitan {theirs:,} vs ours {ours:,}\n{json.dumps(result)}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="1b", help="configs/model/<name>.yaml (default 1b)")
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--global-batch", type=int, default=None, help="default: micro batch x 8 (as throughput.py)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--attn-backend", default="flex", choices=["flex", "flex_flash", "varlen", "sdpa"],
                        help="flex: torchtitan's llama3 default; sdpa: torch SDPA with is_causal (cuDNN/flash), "
                             "equal here because every sample is one document; --cpu-check uses sdpa "
                             "(flex has no CPU backward)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the blocks and the loss")
    parser.add_argument("--disable-cuda-graphs", action="store_true")
    parser.add_argument("--fp32", action="store_true", help="FP32 parameters (no BF16 mixed precision)")
    parser.add_argument("--name", default=None)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench_gpu")
    parser.add_argument("--check-only", action="store_true", help="build the config and compare parameter counts")
    parser.add_argument("--cpu-check", action="store_true", help="tiny shape, 6 steps on CPU over gloo")
    parser.add_argument("--cpu-bf16", action="store_true",
                        help="with --cpu-check: BF16 mixed precision (FSDP2 policy) instead of FP32")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON")
    args = parser.parse_args()

    if args.cpu_check:
        model_cfg = our_model_cfg("tiny")
        # as throughput.py's CPU row: 6 steps, the first 2 (set-up, allocator warm-up) not measured
        args.seq_len, args.micro_batch, args.steps, args.warmup = 128, 2, 6, 2
        args.global_batch = args.global_batch or 4
        args.fp32 = not args.cpu_bf16  # fp32 like throughput.py's CPU row; --cpu-bf16 checks the BF16 path
        args.attn_backend = "sdpa"  # FlexAttention has no backward on CPU
    else:
        model_cfg = our_model_cfg(args.model)
        args.global_batch = args.global_batch or args.micro_batch * 8
    if args.check_only:
        result = check(model_cfg, args.seq_len, args.attn_backend, cpu=args.cpu_check)
    else:
        default_name = "torchtitan_tiny_cpu" if args.cpu_check else f"torchtitan_{args.model}_seq{args.seq_len}_bf16"
        result = run(args, model_cfg, args.name or default_name)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
