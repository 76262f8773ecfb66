"""Bring up the real local Slurm that the Slurm tests need (never a mock, never a skip)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SETUP_SCRIPT = REPO_ROOT / ".ci" / "slurm" / "setup.sh"


def slurm_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    probe = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    return probe.returncode == 0 and any(s.startswith(("idle", "mixed", "alloc")) for s in probe.stdout.split())


def ensure_local_slurm() -> None:
    """Start Slurm with .ci/slurm/setup.sh when it does not answer; fail loudly when that is impossible."""
    if slurm_answers():
        return
    if os.geteuid() != 0:
        raise AssertionError(f"no Slurm answers and this is not root, so {SETUP_SCRIPT} cannot start one: "
                             f"run `sudo bash {SETUP_SCRIPT}` first")
    result = subprocess.run(["bash", str(SETUP_SCRIPT)], capture_output=True, text=True, timeout=600)
    if result.returncode != 0 or not slurm_answers():
        raise AssertionError(f"{SETUP_SCRIPT} did not bring up Slurm (rc {result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
