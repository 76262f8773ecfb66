"""The growth scenarios' torchrun launch, shared: its old checkpoints also feed the streaming test."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.launch import torchrun
from tests.pretrain.growth import growth_worker


@pytest.fixture(scope="session")
def growth_run(tmp_path_factory) -> Path:
    """Output directory of one 2-process launch of every ``growth_worker`` scenario (results.json,
    the old checkpoints ``old_<layout>_<sp|mup>/checkpoints/iter_0000003``, the grown runs)."""
    out = tmp_path_factory.mktemp("growth")
    torchrun(2, ["tests/pretrain/growth/growth_worker.py", str(out), ",".join(growth_worker.SCENARIOS)],
             timeout=600, cpu_only="builds its own gloo group and CPU tensors")
    return out
