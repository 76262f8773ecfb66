"""``python -m launch.probe run_dir=DIR steps=N``: a cluster smoke test that trains nothing.

It exercises, in seconds and on CPUs, everything a real training job needs
from the launcher: the torchrun/srun rendezvous (a gloo all-reduce across all
ranks), a checkpoint written every few steps with a ``latest`` pointer, resume
from that pointer with no flag, and the preemption contract of
:mod:`pretrain.preemption` (save on SIGUSR1, exit with PREEMPTED_EXIT_CODE,
requeue). It follows that contract exactly as the trainer must, so it doubles
as its reference implementation. Run it first on a new cluster:
``python -m launch stage=launch.probe cluster=... run_dir=... steps=20``.

Arguments (key=value): run_dir (required), steps (default 20), step_seconds
(default 0.5), save_every (default 5). Other keys (e.g. parallel=dp2, read by
the launcher for the world size) are accepted and ignored.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from pretrain.preemption import install_preemption_handler


def parse_args(argv: list[str]) -> dict[str, str]:
    args = {}
    for arg in argv:
        key, sep, value = arg.lstrip("+").partition("=")
        if not sep:
            raise SystemExit(f"launch.probe: expected key=value, got {arg!r}")
        args[key] = value
    if "run_dir" not in args:
        raise SystemExit("launch.probe: run_dir=DIR is required")
    return args


def latest_step(ckpt_dir: Path) -> int:
    pointer = ckpt_dir / "latest"
    if not pointer.exists():
        return 0
    return json.loads((ckpt_dir / pointer.read_text().strip() / "state.json").read_text())["step"]


def save(ckpt_dir: Path, step: int) -> None:
    """Write the step's directory first, then flip `latest`: a crash mid-save leaves the old one valid."""
    iter_dir = ckpt_dir / f"iter_{step:07d}"
    iter_dir.mkdir(parents=True, exist_ok=True)
    (iter_dir / "state.json").write_text(json.dumps({"step": step}))
    tmp = ckpt_dir / "latest.tmp"
    tmp.write_text(iter_dir.name)
    tmp.replace(ckpt_dir / "latest")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    run_dir = Path(args["run_dir"])
    steps, step_seconds = int(args.get("steps", 20)), float(args.get("step_seconds", 0.5))
    save_every = int(args.get("save_every", 5))
    preemption = install_preemption_handler()

    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    start = latest_step(ckpt_dir)
    restart = os.environ.get("SLURM_RESTART_COUNT", "0")
    log = (run_dir / "progress.log").open("a") if rank == 0 else None

    def note(message: str) -> None:
        if log:
            log.write(f"{time.strftime('%H:%M:%S')} restart={restart} {message}\n")
            log.flush()

    note(f"start at step {start} world={world}")
    for step in range(start + 1, steps + 1):
        time.sleep(step_seconds)
        ones = torch.ones(1)
        if world > 1:
            dist.all_reduce(ones)  # the rendezvous works: every rank contributes
        if int(ones.item()) != world:
            raise RuntimeError(f"all-reduce gave {ones.item()}, expected {world}")
        note(f"step {step}")
        if step % save_every == 0 and rank == 0:
            save(ckpt_dir, step)
        if preemption.should_save_and_exit_all_ranks():
            if rank == 0:
                save(ckpt_dir, step)
            note(f"preempted at step {step}: saved, exiting for requeue")
            if world > 1:
                dist.barrier()
                dist.destroy_process_group()
            preemption.exit_for_requeue()
    if rank == 0:
        save(ckpt_dir, steps)
        (run_dir / "done.json").write_text(json.dumps({"steps": steps, "world_size": world, "restart": int(restart)}))
    note("done")
    if world > 1:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
