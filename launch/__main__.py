"""``python -m launch stage=STAGE cluster=PRESET [stage overrides...]``.

Checks the whole configuration first (stage, preset, world size against nodes
x GPUs, the stage's own overrides), then either runs the stage here (local
preset: one process, or torchrun) or writes and submits an sbatch script
(Slurm presets). ``dry_run=true`` prints the resolved configs and the command
or sbatch script, and submits nothing.
"""

from __future__ import annotations

import json
import os
import sys

# Before submitit is imported (it reads this once): sweeps submitted as arrays ask Slurm for the
# same early-warning signal as the sbatch path, SIGUSR1, which the trainer handles.
os.environ.setdefault("SUBMITIT_PREEMPT_SIGNAL", "USR1")

import hydra
from omegaconf import DictConfig, OmegaConf

from launch.cli_args import split_argv
from launch.in_allocation import inside_submitit_slurm_job, run_in_allocation
from launch.local import local_command, run_local
from launch.plan import make_plan, max_restarts
from launch.preflight import StageConfigRefused, preflight
from launch.slurm import render_sbatch, submit, wait_for, write_sbatch
from launch.stages import LaunchConfigError


def _cluster_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [o for o in HydraConfig.get().overrides.task if o.lstrip("+~").startswith("cluster.")]


def _sweep_job_number() -> str:
    """Hydra's job number under multirun ("0" otherwise): fills {job_num} in stage overrides."""
    from hydra.core.hydra_config import HydraConfig

    return str(HydraConfig.get().job.num) if HydraConfig.initialized() and HydraConfig.get().job.num is not None else "0"


def launch(cfg: DictConfig) -> int:
    if any("{job_num}" in str(a) for a in cfg.stage_args):  # e.g. run_dir=/runs/sweep/{job_num}
        cfg.stage_args = [str(a).replace("{job_num}", _sweep_job_number()) for a in cfg.stage_args]
    plan = make_plan(cfg, _cluster_overrides())
    for note in preflight(plan, cfg.cluster):
        print(f"[launch] preflight: {note}", flush=True)
    if cfg.dry_run:
        print("# launch config\n" + OmegaConf.to_yaml(cfg, resolve=True))
        if plan.stage_config is not None:
            print(f"# {plan.stage_name} config\n" + OmegaConf.to_yaml(plan.stage_config, resolve=True))
    if inside_submitit_slurm_job():  # a sweep point of a job array: run here, on this allocation
        return run_in_allocation(plan)
    record = {"stage": plan.stage_name, "launcher": plan.launcher, "nodes": plan.nodes,
              "procs_per_node": plan.procs_per_node, "stage_args": plan.stage_args}
    if plan.launcher == "local":
        restarts = max_restarts(plan, cfg.cluster)
        command = local_command(plan, restarts)
        if cfg.dry_run:
            print("# command\n" + " ".join(command))
            return 0
        plan.launch_dir.mkdir(parents=True, exist_ok=True)
        (plan.launch_dir / "launch.json").write_text(json.dumps({**record, "command": command}, indent=1))
        return run_local(plan, restarts)

    script = render_sbatch(plan, cfg.cluster, str(cfg.job_name))
    path = write_sbatch(plan, script)
    if cfg.dry_run:
        print(f"# sbatch script (written to {path}, not submitted)\n{script}")
        return 0
    job_id = submit(path)
    (plan.launch_dir / "launch.json").write_text(json.dumps({**record, "job_id": job_id, "script": str(path)}, indent=1))
    print(f"[launch] submitted job {job_id}: {path}; log {plan.launch_dir / 'slurm'}", flush=True)
    if cfg.wait:
        state = wait_for(job_id)
        print(f"[launch] job {job_id} finished: {state}")
        return 0 if state == "COMPLETED" else 1
    return 0


OmegaConf.register_new_resolver("launch_none_if_zero", lambda value: None if int(value) == 0 else int(value),
                                replace=True)


@hydra.main(config_path="../configs", config_name="launch", version_base=None)
def main(cfg: DictConfig) -> int:
    try:
        code = launch(cfg)
    except (LaunchConfigError, StageConfigRefused) as err:
        print(f"[launch] configuration error: {err}", file=sys.stderr)
        sys.exit(2)
    if code:
        sys.exit(code)
    return code


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *split_argv(sys.argv[1:])]
    main()
