"""The emulated cluster from Python: a thin wrapper over scripts/rehearsal/cluster.sh.

Why a shell script underneath: bringing up namespaces, a bridge and daemons is a list of
``ip``/``nsenter`` commands that an operator should be able to run and read by hand
(``bash scripts/rehearsal/cluster.sh up``); Python only adds "is this machine able to",
"run this on the login node" and clean-up for the driver and the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "rehearsal" / "cluster.sh"
CTL_NETNS = "/var/run/netns/rh-ctl"


def missing_capability() -> str | None:
    """Why this machine cannot host the emulated cluster, or None when it can.

    Root (network namespaces, slurmd), iproute2 with ``ip netns``, nsenter/unshare, and
    slurm-wlm (or apt to install it through .ci/slurm/setup.sh).
    """
    if os.geteuid() != 0:
        return "not root: network namespaces and slurmd need root (CI runs .ci/run as root)"
    for tool in ("ip", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (bash .ci/rehearsal/setup.sh installs iproute2/util-linux)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns` does not work here: {probe.stderr.strip()}"
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        return "no slurm-wlm and no apt-get to install it"
    return None


def up(nodes: int, timeout_s: float = 300) -> None:
    """Bring the cluster up with ``nodes`` nodes (idempotent: an already healthy one is kept)."""
    run = subprocess.run(["bash", str(SCRIPT), "up", str(nodes)], capture_output=True, text=True, timeout=timeout_s)
    if run.returncode != 0:
        raise RuntimeError(f"{SCRIPT} up {nodes} failed (rc {run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")


def down(timeout_s: float = 120) -> None:
    """Remove everything ``up`` made: jobs, daemons, namespaces, /etc/hosts lines, state."""
    subprocess.run(["bash", str(SCRIPT), "down"], capture_output=True, text=True, timeout=timeout_s, check=True)


def conf_path() -> str:
    return subprocess.run(["bash", str(SCRIPT), "conf"], capture_output=True, text=True, check=True).stdout.strip()


def on_login(argv: list[str]) -> list[str]:
    """``argv`` run on the login node: the namespace of the bridge and slurmctld, with the
    rehearsal's SLURM_CONF. Every sbatch/scontrol for the emulated cluster goes through here."""
    return ["env", f"SLURM_CONF={conf_path()}", "nsenter", f"--net={CTL_NETNS}", *argv]


def login_run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    return subprocess.run(on_login(argv), **kwargs)


def scontrol_field(job_id: str, field: str) -> str:
    out = login_run(["scontrol", "show", "job", job_id]).stdout
    for token in out.split():
        if token.startswith(field + "="):
            return token.split("=", 1)[1]
    return ""
