"""Shared fixtures: a real local Ray cluster for the tests that need one, repo paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


def _start_ray():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, ignore_reinit_error=True)
    return ray


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster shared by consecutive tests that need one (starting one costs ~3 s)."""
    yield _start_ray()
    import ray

    ray.shutdown()


def pytest_runtest_setup(item):
    """Restart Ray for a test that needs it after the hook below stopped it."""
    if "ray_cluster" in item.fixturenames:
        _start_ray()


def pytest_runtest_teardown(item, nextitem):
    """Stop Ray once the next test does not need it: an idle cluster costs ~5% of a core for the
    rest of the session (raylet, GCS and agents polling), time the multi-process tests want."""
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized() and nextitem is not None and "ray_cluster" not in nextitem.fixturenames:
        ray.shutdown()
