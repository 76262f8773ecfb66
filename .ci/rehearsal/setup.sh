#!/usr/bin/env bash
# Tools the emulated multi-node Slurm needs (scripts/rehearsal/cluster.sh, tests/launch/test_rehearsal.py):
# iproute2 for `ip netns`/veth/bridge, util-linux for nsenter/unshare. Slurm itself comes from
# .ci/slurm/setup.sh. Idempotent: installs only what is missing. Needs root.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
  echo "[ci/rehearsal] not root: skipping (the rehearsal test skips without root)" >&2
  exit 0
fi
missing=()
command -v ip >/dev/null || missing+=(iproute2)
{ command -v nsenter >/dev/null && command -v unshare >/dev/null; } || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  echo "[ci/rehearsal] installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${missing[@]}" >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
fi
echo "[ci/rehearsal] ready: $(ip -V)"
