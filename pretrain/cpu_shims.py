"""Let megatron-core run over gloo on a machine without CUDA (tests, CI, the demo).

megatron-core assumes a CUDA device in a handful of places: the RNG tracker
saves and restores the CUDA generator, buffers are allocated on
``torch.cuda.current_device()``, the optimizer and grad clipping assert
``param.type() == 'torch.cuda.FloatTensor'``, and some tensors are created
with ``device="cuda"`` or moved with ``.cuda()``.  Rather than forking
megatron, :func:`activate_cpu_shims` maps those few spots onto the CPU:

* the RNG tracker's "CUDA" state is the CPU generator's state (so
  ``model_parallel_cuda_manual_seed`` and ``get_cuda_rng_tracker().fork()``
  behave exactly as on GPU, only on the CPU generator);
* ``torch.cuda.current_device()`` is the CPU device and ``synchronize`` a no-op;
* a :class:`torch.overrides.TorchFunctionMode` rewrites ``device="cuda"``
  arguments to CPU, makes ``Tensor.cuda()`` a no-op and reports CPU tensors
  under their ``torch.cuda.*`` type names.

Sequence parallelism's norm-weight tagging lives in :mod:`pretrain.model.teleflm`
(our own norm class), not here, because it is a model property.

The shims are strictly opt-in by environment: with CUDA present the function
does nothing.  Every patch is guarded with ``getattr``/``hasattr`` so newer
megatron-core releases that rename internals degrade to "shim not needed"
instead of crashing at import.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode

_CPU = torch.device("cpu")
_activated = False
_lock = threading.Lock()
_mode: "CudaToCpuMode | None" = None

_CUDA_TYPE_NAMES = {
    torch.float32: "torch.cuda.FloatTensor",
    torch.float16: "torch.cuda.HalfTensor",
    torch.bfloat16: "torch.cuda.BFloat16Tensor",
    torch.float64: "torch.cuda.DoubleTensor",
    torch.int64: "torch.cuda.LongTensor",
    torch.int32: "torch.cuda.IntTensor",
    torch.uint8: "torch.cuda.ByteTensor",
    torch.bool: "torch.cuda.BoolTensor",
}


def shims_needed(cuda_available: bool | None = None) -> bool:
    """The single guard: shims are for machines without CUDA only."""
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    return not cuda_available


def shims_active() -> bool:
    return _activated


def _to_cpu_device(device: Any) -> Any:
    """Map any CUDA device spec (str, int ordinal, torch.device) onto the CPU."""
    if isinstance(device, torch.device):
        return _CPU if device.type == "cuda" else device
    if isinstance(device, str) and device.startswith("cuda"):
        return _CPU
    return device


class CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA device arguments to CPU for every torch call."""

    def __torch_function__(self, func: Callable, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            tensor = args[0]
            if tensor.device.type == "cpu" and tensor.dtype in _CUDA_TYPE_NAMES:
                return _CUDA_TYPE_NAMES[tensor.dtype]
        if "device" in kwargs:
            kwargs["device"] = _to_cpu_device(kwargs["device"])
        if func is torch.Tensor.to and len(args) > 1:
            args = (args[0], _to_cpu_device(args[1]), *args[2:])
        return func(*args, **kwargs)


def _cpu_get_rng_state(*_args: Any, **_kwargs: Any) -> torch.Tensor:
    return torch.get_rng_state()


def _cpu_set_rng_state(new_state: torch.Tensor, *_args: Any, **_kwargs: Any) -> None:
    torch.set_rng_state(new_state)


def _cpu_manual_seed(seed: int) -> None:
    # Not torch.manual_seed: that calls torch.cuda.manual_seed_all and would recurse.
    torch.default_generator.manual_seed(int(seed))


def _patch_torch_cuda() -> None:
    cuda = torch.cuda
    cuda.current_device = lambda: _CPU  # type: ignore[assignment]
    cuda.synchronize = lambda *_a, **_k: None  # type: ignore[assignment]
    cuda.get_rng_state = _cpu_get_rng_state  # type: ignore[assignment]
    cuda.set_rng_state = _cpu_set_rng_state  # type: ignore[assignment]
    cuda.manual_seed = _cpu_manual_seed  # type: ignore[assignment]
    if hasattr(cuda, "random"):
        for name, fn in (("get_rng_state", _cpu_get_rng_state), ("set_rng_state", _cpu_set_rng_state),
                         ("manual_seed", _cpu_manual_seed)):
            if hasattr(cuda.random, name):
                setattr(cuda.random, name, fn)


def _patch_megatron_rng() -> None:
    """megatron's tracker reads/writes the CUDA generator through two private helpers."""
    try:
        from megatron.core.tensor_parallel import random as mcore_random
    except ImportError:  # megatron-core not installed: nothing to patch
        return
    for name, replacement in (("_get_cuda_rng_state", _cpu_get_rng_state),
                              ("_set_cuda_rng_state", _cpu_set_rng_state)):
        if hasattr(mcore_random, name):
            setattr(mcore_random, name, replacement)


def activate_cpu_shims(cuda_available: bool | None = None) -> bool:
    """Install the CPU shims once per process; returns whether they are active.

    A no-op (returns False) when CUDA is available.  Safe to call many times.
    The function mode is pushed on the calling thread's mode stack; threads
    that run megatron code (e.g. a background checkpoint writer) should call
    :func:`enter_mode_in_thread`.
    """
    global _activated, _mode
    if not shims_needed(cuda_available):
        return False
    with _lock:
        if _activated:
            return True
        _patch_torch_cuda()
        _patch_megatron_rng()
        _mode = CudaToCpuMode()
        _mode.__enter__()
        _activated = True
    return True


def enter_mode_in_thread() -> None:
    """Function modes are thread-local: push ours on a worker thread too."""
    if _activated:
        CudaToCpuMode().__enter__()


def defer_torch_compile(cuda_available: bool | None = None) -> bool:
    """Make ``torch.compile`` compile at a function's first call, not at decoration; call before importing megatron.

    megatron-core decorates its fused kernels with ``torch.compile`` at import
    (``megatron.core.jit.jit_fuser``), and the first such call imports dynamo
    and inductor: 2-4 s of CPU in every trainer process, while the CPU path
    never calls those kernels (``fast_path`` turns the fusions off without a
    GPU). Deferred, the import happens only if one is called, and then the
    function is compiled exactly as before. Returns whether it was installed.
    """
    if not shims_needed(cuda_available) or getattr(torch.compile, "_deferred", False):
        return False
    compile_now = torch.compile

    def compile_at_first_call(model: Any = None, **options: Any) -> Any:
        if model is None:  # used as @torch.compile(mode=...)
            return lambda fn: compile_at_first_call(fn, **options)
        compiled = None

        @functools.wraps(model)
        def first_call_compiles(*args: Any, **kwargs: Any) -> Any:
            nonlocal compiled
            if compiled is None:
                compiled = compile_now(model, **options)
            return compiled(*args, **kwargs)

        return first_call_compiles

    compile_at_first_call._deferred = True  # type: ignore[attr-defined]
    torch.compile = compile_at_first_call
    return True
