"""New entries of a grown tensor as a pure function of (seed, key, purpose, global element index).

Why: streaming growth builds each target slice on its own rank, so a new
entry must not depend on which slice (or process) computes it; the
one-process growth calls the same function on whole tensors, so both give
bitwise identical checkpoints.

How: a counter-based generator (numpy's Philox4x64, keyed by a hash of
seed/key/purpose) gives element ``n`` of the flat global tensor the raw draw
``n`` (counter ``n // 4``, word ``n % 4``); its top 52 bits become a uniform
in (0, 1) with exact arithmetic, mapped to a (±2σ truncated) normal by the
inverse normal CDF (``torch.special.ndtri``, a scalar kernel: the same input
gives the same output whatever the chunking).  The std and truncation are the
init rule of the *new* width (``pretrain.model.mup.init_std``).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
from omegaconf import DictConfig

from pretrain.config.schema import typed_model
from pretrain.model.mup import init_std
from pretrain.model.teleflm import param_kind

CHUNK = 1 << 16  # elements per generator call: bounds the 64-bit temporaries (~3 MB)
TRUNCATION = 2.0  # ±2σ, as torch.nn.init.trunc_normal_ in pretrain.model.mup.initializer
_LOW = 0.5 * math.erfc(TRUNCATION / math.sqrt(2.0))   # Φ(-2)
_HIGH = 0.5 * math.erfc(-TRUNCATION / math.sqrt(2.0))  # Φ(2)


def philox_key(seed: int, key: str, purpose: str) -> list[int]:
    """128-bit Philox key of one (seed, checkpoint key, purpose) stream."""
    digest = hashlib.sha256(f"{seed}:{key}:{purpose}".encode()).digest()
    return [int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:16], "little")]


def _raw(key: list[int], start: int, count: int) -> np.ndarray:
    """Raw 64-bit draws ``start .. start + count`` of the stream (counter start // 4, word start % 4)."""
    generator = np.random.Philox(key=key, counter=start // 4)
    return generator.random_raw(start % 4 + count)[start % 4:]


def _normals(key: list[int], start: int, count: int, truncated: bool) -> torch.Tensor:
    """Standard (truncated) normals of elements ``start .. start + count``, float64."""
    odd = ((_raw(key, start, count) >> np.uint64(12)) << np.uint64(1)) | np.uint64(1)  # odd, < 2**53
    uniform = torch.from_numpy(odd.astype(np.float64) * 2.0 ** -53)  # exact: in (0, 1)
    if truncated:
        uniform = uniform * (_HIGH - _LOW) + _LOW
    normal = torch.special.ndtri(uniform)
    return normal.clamp_(-TRUNCATION, TRUNCATION) if truncated else normal


def fresh_normal(key: list[int], full_shape: tuple[int, ...], region: tuple[slice, ...], std: float,
                 truncated: bool, dtype: torch.dtype) -> torch.Tensor:
    """``std`` × normals of ``region`` (one slice per axis, steps of 1) of a tensor of ``full_shape``.

    Element values depend only on their flat index in ``full_shape``; the
    region is produced in contiguous runs along the last axis, at most
    ``CHUNK`` elements at a time.
    """
    starts = [s.start or 0 for s in region]
    sizes = [(s.stop if s.stop is not None else n) - start for s, n, start in zip(region, full_shape, starts)]
    out = torch.empty(sizes, dtype=dtype)
    if out.numel() == 0:
        return out
    strides = [math.prod(full_shape[i + 1:]) for i in range(len(full_shape))]
    # Merge the trailing axes the region covers whole: fewer, longer runs.
    run_axes = len(sizes) - 1
    while run_axes > 0 and sizes[run_axes] == full_shape[run_axes]:
        run_axes -= 1
    run = math.prod(sizes[run_axes:]) if sizes else 1
    flat_out = out.view(-1, run)
    outer = sizes[:run_axes]
    for row, index in enumerate(np.ndindex(*outer) if outer else [()]):
        start = sum((starts[i] + index[i]) * strides[i] for i in range(run_axes))
        start += sum(starts[i] * strides[i] for i in range(run_axes, len(sizes)))
        for lo in range(0, run, CHUNK):
            count = min(CHUNK, run - lo)
            flat_out[row, lo:lo + count] = (_normals(key, start + lo, count, truncated) * std).to(dtype)
    return out


def fresh_entries(model_key: str, full_shape: tuple[int, ...], region: tuple[slice, ...],
                  new_model_cfg: DictConfig, seed: int, purpose: str, dtype: torch.dtype) -> torch.Tensor:
    """New parameter entries of ``region``: the new width's init rule; ones for norm gains.

    A parameter and its fp32 master copy pass the same ``model_key``, so they
    get the same values.
    """
    std = init_std(new_model_cfg, param_kind(model_key), model_key)
    sizes = [(s.stop if s.stop is not None else n) - (s.start or 0) for s, n in zip(region, full_shape)]
    if std is None:
        return torch.ones(sizes, dtype=dtype)
    truncated = bool(typed_model(new_model_cfg).truncated_normal_init)
    return fresh_normal(philox_key(seed, model_key, purpose), full_shape, region, std, truncated, dtype)
