"""The CPU shims: active and effective without CUDA, inert with it.

Activation pushes a process-wide torch function mode, so the active-side
checks run in a fresh interpreter and never leak into other tests.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from pretrain import cpu_shims

ACTIVE_CHECKS = textwrap.dedent(
    """
    import os, torch, torch.distributed as dist
    from pretrain.cpu_shims import activate_cpu_shims, shims_active
    assert activate_cpu_shims() is True and shims_active()
    assert activate_cpu_shims() is True  # idempotent
    from torch.overrides import _get_current_function_mode_stack
    modes = [m for m in _get_current_function_mode_stack() if type(m).__name__ == "CudaToCpuMode"]
    assert len(modes) == 1, modes

    # CUDA device arguments land on the CPU; .cuda() is a no-op; CUDA type names.
    assert torch.cuda.current_device() == torch.device("cpu")
    torch.cuda.synchronize()
    t = torch.zeros(3, device="cuda")
    assert t.device.type == "cpu" and t.cuda() is t and t.to("cuda").device.type == "cpu"
    assert t.type() == "torch.cuda.FloatTensor"
    assert t.bfloat16().type() == "torch.cuda.BFloat16Tensor"
    assert t.type(torch.float64).dtype == torch.float64  # explicit conversions untouched

    # megatron's RNG tracker runs on the CPU generator.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["TEST_PORT"])
    dist.init_process_group("gloo", rank=0, world_size=1)
    from megatron.core import parallel_state, tensor_parallel
    parallel_state.initialize_model_parallel()
    tensor_parallel.model_parallel_cuda_manual_seed(123)
    tracker = tensor_parallel.get_cuda_rng_tracker()
    before = torch.get_rng_state()
    with tracker.fork():
        inside_1 = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), before), "fork must restore the default stream"
    with tracker.fork():
        inside_2 = torch.rand(4)
    assert not torch.equal(inside_1, inside_2), "the forked stream must advance"
    tensor_parallel.model_parallel_cuda_manual_seed(123)
    with tensor_parallel.get_cuda_rng_tracker().fork():
        assert torch.equal(torch.rand(4), inside_1), "same seed, same tracker stream"
    outside = torch.rand(4)
    assert not torch.equal(outside, inside_1)
    dist.destroy_process_group()
    print("SHIMS-OK")
    """
)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the shims only exist for machines without CUDA")
def test_shims_activate_and_fix_megatron_on_cpu(repo_root):
    env = {**__import__("os").environ, "TEST_PORT": str(_free_port()), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", ACTIVE_CHECKS], cwd=repo_root, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "SHIMS-OK" in result.stdout


INERT_CHECKS = textwrap.dedent("""
    import torch
    from pretrain import cpu_shims
    current_device_before = torch.cuda.current_device
    assert cpu_shims.shims_needed(cuda_available=True) is False
    assert cpu_shims.shims_needed(cuda_available=False) is True
    assert cpu_shims.activate_cpu_shims(cuda_available=True) is False
    assert torch.cuda.current_device is current_device_before
    compile_before = torch.compile
    assert cpu_shims.defer_torch_compile(cuda_available=True) is False and torch.compile is compile_before
    assert not cpu_shims.shims_active()
    print("INERT-OK")
""")


def test_shims_are_inert_when_cuda_is_present(repo_root):
    # a fresh interpreter: earlier tests in this process may have activated the shims for real
    result = subprocess.run([sys.executable, "-c", INERT_CHECKS], cwd=repo_root, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "INERT-OK" in result.stdout


DEFERRED_COMPILE_CHECKS = textwrap.dedent("""
    import sys, torch
    from pretrain.cpu_shims import defer_torch_compile
    assert defer_torch_compile() is True and defer_torch_compile() is False  # once
    import megatron.core  # decorates its fused kernels with torch.compile
    from megatron.core.fusions.fused_bias_swiglu import bias_swiglu
    assert "torch._dynamo" not in sys.modules and "torch._inductor" not in sys.modules

    @torch.compile(backend="eager")
    def double(x):
        return 2 * x

    assert double.__name__ == "double"
    assert torch.equal(double(torch.ones(3)), torch.full((3,), 2.0))  # compiled at its first call
    assert "torch._dynamo" in sys.modules
    print("DEFERRED-OK")
""")


@pytest.mark.skipif(torch.cuda.is_available(), reason="deferral is a CPU shim")
def test_torch_compile_is_deferred_to_the_first_call_so_importing_megatron_skips_dynamo(repo_root):
    result = subprocess.run([sys.executable, "-c", DEFERRED_COMPILE_CHECKS], cwd=repo_root, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "DEFERRED-OK" in result.stdout
