"""Which GPU features a run uses: one pure function from (config, machine) to megatron's flags.

Megatron-LM turns on every kernel fusion by default (``--no-masked-softmax-fusion``,
``--no-bias-swiglu-fusion``, ``--no-bias-dropout-fusion``, ``--no-rope-fusion``,
``--no-persist-layer-norm``, ``--no-gradient-accumulation-fusion`` exist to turn them
*off*; only ``--cross-entropy-loss-fusion`` is opt-in) and builds the
TransformerEngine layer spec. A CPU machine can run none of those kernels. Keeping the
choice in :func:`choose_fast_path` — a function of a :class:`Machine` description,
not of ``torch.cuda`` calls scattered through the model code — lets CPU tests check
exactly the flags a CUDA + TE node gets, and lets the start row of metrics.jsonl say
what a run actually used.

A CUDA machine whose TransformerEngine import fails is an error (``train.gpu.spec=auto``):
falling back to the local spec silently costs a large share of throughput on every GPU.
Asking for ``train.gpu.spec=local`` by name is the way to train without TE.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from typing import Any

from omegaconf import DictConfig

from pretrain.config.schema import typed

SPECS = ("auto", "transformer_engine", "local")
GRAD_REDUCE_DTYPES = ("fp32", "bf16")
FP8_FORMATS = (None, "hybrid", "e4m3")
FP8_RECIPES = ("delayed", "tensorwise", "mxfp8", "blockwise")
FP8_MIN_CAPABILITY = (8, 9)   # Ada / Hopper: the first GPUs with FP8 tensor cores


@dataclass(frozen=True)
class Machine:
    """What this process can use; :func:`detect_machine` reads it, tests construct it."""

    cuda: bool
    transformer_engine: bool            # TE and megatron's TE extension import cleanly
    transformer_engine_error: str = ""  # why not, when CUDA is there and TE is not
    apex: bool = False                  # apex's fused kernels (persistent LN, grad-accum fusion)
    compute_capability: tuple[int, int] | None = None


@functools.cache
def detect_machine() -> Machine:
    import torch

    cuda = torch.cuda.is_available()
    te_error = ""
    try:
        import transformer_engine  # noqa: F401
        from megatron.core.extensions.transformer_engine import TENorm  # noqa: F401
        have_te = True
    except Exception as err:  # ImportError, or a TE build that does not match this torch/CUDA
        have_te, te_error = False, f"{type(err).__name__}: {err}"
    try:
        import fused_weight_gradient_mlp_cuda  # noqa: F401  (apex's CUDA extension)
        have_apex = True
    except Exception:
        have_apex = False
    capability = torch.cuda.get_device_capability() if cuda else None
    return Machine(cuda=cuda, transformer_engine=have_te, transformer_engine_error=te_error,
                   apex=have_apex, compute_capability=capability)


@dataclass(frozen=True)
class FastPath:
    """The GPU features one run uses; every megatron flag that depends on the machine is here."""

    spec: str                              # transformer_engine | local
    attention: str                         # te (TE picks flash / cuDNN fused / unfused) | sdpa
    fusions: dict[str, bool] = field(default_factory=dict)   # TransformerConfig fusion flags
    grad_reduce_in_fp32: bool = True
    overlap_grad_reduce: bool = True
    overlap_param_gather: bool = False
    align_param_gather: bool = False
    tp_comm_overlap: bool = False
    fp8: str | None = None
    fp8_recipe: str | None = None

    def transformer_kwargs(self) -> dict[str, Any]:
        """The TransformerConfig arguments this module owns."""
        kwargs: dict[str, Any] = dict(self.fusions, tp_comm_overlap=self.tp_comm_overlap)
        if self.fp8:
            kwargs.update(fp8=self.fp8, fp8_recipe=self.fp8_recipe)
        return kwargs

    def ddp_kwargs(self) -> dict[str, Any]:
        """The DistributedDataParallelConfig arguments this module owns."""
        return dict(grad_reduce_in_fp32=self.grad_reduce_in_fp32, overlap_grad_reduce=self.overlap_grad_reduce,
                    overlap_param_gather=self.overlap_param_gather, align_param_gather=self.align_param_gather)

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def _fusions(machine: Machine, spec: str, wanted: bool) -> dict[str, bool]:
    """Megatron-LM's defaults, limited to the kernels this machine has."""
    te = spec == "transformer_engine"
    on_gpu = machine.cuda and wanted
    return {
        # torch.jit / megatron's own fused kernels: any CUDA machine
        "bias_activation_fusion": on_gpu,          # SwiGLU (bias-free here) as one kernel
        "bias_dropout_fusion": on_gpu,
        # megatron's fused softmax only serves its own unfused attention; TE and SDPA do their own
        "masked_softmax_fusion": on_gpu and te,
        "apply_rope_fusion": on_gpu and (te or machine.apex),
        "persist_layer_norm": on_gpu and machine.apex,
        # wgrad accumulated straight into the fp32 main_grad: TE's linears, or apex for local ones
        "gradient_accumulation_fusion": on_gpu and (te or machine.apex),
        "cross_entropy_loss_fusion": False,        # opt-in in Megatron-LM too
    }


def choose_fast_path(cfg: DictConfig, machine: Machine) -> FastPath:
    """``train.gpu`` + parallel layout + machine -> the features used; errors name the key."""
    cfg = typed(cfg, strict=False)
    gpu, train, parallel = cfg.train.gpu, cfg.train, cfg.parallel
    if gpu.spec not in SPECS:
        raise ValueError(f"train.gpu.spec must be one of {SPECS}, got {gpu.spec!r}")
    if gpu.grad_reduce_dtype not in GRAD_REDUCE_DTYPES:
        raise ValueError(f"train.gpu.grad_reduce_dtype must be one of {GRAD_REDUCE_DTYPES}, got {gpu.grad_reduce_dtype!r}")
    if gpu.fp8 not in FP8_FORMATS:
        raise ValueError(f"train.gpu.fp8 must be one of {FP8_FORMATS}, got {gpu.fp8!r}")
    if gpu.fp8_recipe not in FP8_RECIPES:
        raise ValueError(f"train.gpu.fp8_recipe must be one of {FP8_RECIPES}, got {gpu.fp8_recipe!r}")

    spec = gpu.spec
    if spec == "auto":
        if machine.cuda and not machine.transformer_engine:
            raise RuntimeError(
                "train.gpu.spec=auto: this machine has CUDA but TransformerEngine does not import "
                f"({machine.transformer_engine_error or 'not installed'}). Install the gpu extra "
                "(pip install -e '.[gpu]') or set train.gpu.spec=local to train on the slower local spec.")
        spec = "transformer_engine" if machine.cuda else "local"
    if spec == "transformer_engine" and not machine.transformer_engine:
        raise RuntimeError(f"train.gpu.spec=transformer_engine, but TransformerEngine does not import "
                           f"({machine.transformer_engine_error or 'not installed'})")

    tp = parallel.tensor_model_parallel_size
    if gpu.tp_comm_overlap and not (spec == "transformer_engine" and machine.cuda and tp > 1
                                    and parallel.sequence_parallel):
        raise ValueError("train.gpu.tp_comm_overlap needs the TransformerEngine spec on CUDA, "
                         "tensor parallelism > 1 and parallel.sequence_parallel=true")
    if gpu.fp8:
        if spec != "transformer_engine" or not machine.cuda:
            raise ValueError("train.gpu.fp8 needs the TransformerEngine spec on a CUDA machine")
        if (machine.compute_capability or (0, 0)) < FP8_MIN_CAPABILITY:
            raise ValueError(f"train.gpu.fp8={gpu.fp8}: this GPU (compute capability {machine.compute_capability}) "
                             f"has no FP8 tensor cores (needs >= {FP8_MIN_CAPABILITY}, e.g. H100); set train.gpu.fp8=null")
        if not train.bf16:
            raise ValueError("train.gpu.fp8 needs train.bf16=true (FP8 GEMMs inside a BF16 model, as in Megatron-LM)")

    distributed_optimizer = parallel.use_distributed_optimizer
    overlap_param_gather = train.overlap_param_gather
    if overlap_param_gather is None:  # null: on where it pays (a GPU machine), off on CPU test runs
        overlap_param_gather = machine.cuda
    overlap_param_gather = bool(overlap_param_gather and distributed_optimizer)
    return FastPath(
        spec=spec,
        attention="te" if spec == "transformer_engine" else "sdpa",
        fusions=_fusions(machine, spec, gpu.fusions),
        grad_reduce_in_fp32=gpu.grad_reduce_dtype == "fp32",
        overlap_grad_reduce=train.overlap_grad_reduce,
        overlap_param_gather=overlap_param_gather,
        # Megatron-LM --align-param-gather: with VPP, launch all chunks' param all-gathers together
        align_param_gather=overlap_param_gather and bool(parallel.virtual_pipeline_model_parallel_size),
        tp_comm_overlap=bool(gpu.tp_comm_overlap),
        fp8=gpu.fp8,
        fp8_recipe=gpu.fp8_recipe if gpu.fp8 else None,
    )


def fast_path_for(cfg: DictConfig) -> FastPath:
    """The features this process uses (the machine detected once per process)."""
    return choose_fast_path(cfg, detect_machine())


FUSION_FLAGS = ("bias_activation_fusion", "bias_dropout_fusion", "masked_softmax_fusion", "apply_rope_fusion",
                "persist_layer_norm", "gradient_accumulation_fusion", "cross_entropy_loss_fusion")


def _qualified(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def in_use(model_chunks: list, optimizer) -> dict[str, Any]:
    """What the built run uses, read off the objects (not the config): the start row's ``fast_path``.

    The spec and attention class of the first transformer layer, the fusion flags the model's
    TransformerConfig carries, the DDP reduction settings, and the class of the inner optimizer
    (torch Adam, TE FusedAdam or apex FusedAdam: megatron picks whichever imports).
    """
    from megatron.core.transformer.transformer_layer import TransformerLayer

    layer = next((m for chunk in model_chunks for m in chunk.modules() if isinstance(m, TransformerLayer)), None)
    attention = getattr(getattr(layer, "self_attention", None), "core_attention", None)
    qkv = getattr(getattr(layer, "self_attention", None), "linear_qkv", None)
    config = model_chunks[0].config
    ddp = getattr(model_chunks[0], "ddp_config", None)
    inner = getattr(optimizer, "chained_optimizers", None) or [optimizer]
    return {
        "spec": "transformer_engine" if qkv is not None and "transformer_engine" in type(qkv).__module__ else "local",
        "attention": _qualified(attention) if attention is not None else None,
        "fusions": {flag: bool(getattr(config, flag, False)) for flag in FUSION_FLAGS},
        "tp_comm_overlap": bool(config.tp_comm_overlap),
        "fp8": config.fp8,
        "grad_reduce_in_fp32": bool(ddp.grad_reduce_in_fp32) if ddp else None,
        "overlap_grad_reduce": bool(ddp.overlap_grad_reduce) if ddp else None,
        "overlap_param_gather": bool(ddp.overlap_param_gather) if ddp else None,
        "optimizer": sorted({_qualified(opt.optimizer) for opt in inner if getattr(opt, "optimizer", None) is not None}),
    }
