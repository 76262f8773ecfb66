"""The growth scenarios' torchrun launch, shared: its old checkpoints also feed the streaming test."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pretrain.growth import launch_growth_scenarios


@pytest.fixture(scope="session")
def growth_run(tmp_path_factory) -> Path:
    """Output directory of the local spec's launch (results.json, the old checkpoints
    ``old_<layout>_<sp|mup>/checkpoints/iter_0000003``, the grown runs)."""
    return launch_growth_scenarios(tmp_path_factory.mktemp("growth_local"), "local")
