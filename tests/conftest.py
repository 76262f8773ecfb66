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


def _ray_needed_later_in_directory(session) -> dict[str, bool]:
    """nodeid -> whether a later test in the same directory needs Ray (computed once per session)."""
    needed = getattr(session, "_ray_needed_later", None)
    if needed is None:
        needed, seen = {}, set()
        for item in reversed(session.items):
            directory = item.path.parent
            needed[item.nodeid] = directory in seen
            if "ray_cluster" in item.fixturenames:
                seen.add(directory)
        session._ray_needed_later = needed
    return needed


def pytest_runtest_teardown(item, nextitem):
    """Stop Ray once no later test of this directory needs it: an idle cluster costs ~5% of a core
    for the rest of the session (raylet, GCS and agents polling), time the multi-process tests want.
    Between two Ray tests of one directory it stays up: the non-Ray tests between them are mostly short, and a
    stop and a restart cost ~4 s (tests/data_pipeline interleaves 12 groups of Ray tests)."""
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized() or nextitem is None or "ray_cluster" in nextitem.fixturenames:
        return
    if not _ray_needed_later_in_directory(item.session).get(item.nodeid, False):
        ray.shutdown()
