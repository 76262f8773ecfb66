"""Rank-local conditions every rank must act on together, agreed in one all-reduce per step.

A SIGUSR1 reaches some ranks and not others; a spike verdict could (in principle)
differ by a rounding; a stop request is raised where the problem is seen. Each
of those used to cost its own world-wide all-reduce and host sync per step. Now
the loop collects every callback's flags after the backward pass and reduces
them together: a flag is true everywhere if it was raised anywhere.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.distributed as dist


def agree_flags(local: Mapping[str, bool]) -> dict[str, bool]:
    """``{name: raised on any rank}`` in one MAX all-reduce (no collective without flags or a world).

    Every rank must pass the same names (they come from the callback list, which the
    config fixes); they are reduced in sorted order so the tensor layout matches.
    """
    names = sorted(local)
    if not names or not (dist.is_available() and dist.is_initialized()):
        return {name: bool(local[name]) for name in names}
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
        else torch.device("cpu")
    values = torch.tensor([1 if local[name] else 0 for name in names], dtype=torch.int32, device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return {name: bool(value) for name, value in zip(names, values.tolist())}
