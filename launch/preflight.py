"""The trainer's own validation, run by the launcher before it writes or submits anything.

Why here: a config the trainer would refuse (a batch DP does not divide, fp32 on GPUs, a layout
the planner says does not fit 80 GB) should cost seconds on the login node, not a queue wait and
then a failure on 896 GPUs. The rules are the trainer's (pretrain/config/validate.py, one copy);
this module only decides what the login node can know: the target's GPUs come from the cluster
preset, and the data checks run only where ``data.path`` is readable here.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from launch.plan import LaunchPlan


class StageConfigRefused(ValueError):
    """The stage's own validation refused the resolved config; ``errors`` name the keys."""

    def __init__(self, stage: str, errors: list[str]) -> None:
        self.errors = errors
        super().__init__(f"{stage} would refuse this run:\n  - " + "\n  - ".join(errors))


def preflight(plan: LaunchPlan, cluster: DictConfig) -> list[str]:
    """Raise :class:`StageConfigRefused` when the stage would refuse its config; return notes on
    what could not be checked from here."""
    if plan.stage.module != "pretrain" or plan.stage_config is None:
        return []
    from pretrain.config.resolve import resolve_config
    from pretrain.config.validate import config_errors
    from pretrain.data import MANIFEST, read_manifest

    cfg = plan.stage_config
    data_path = cfg.data.path
    readable = bool(data_path) and (Path(data_path) / MANIFEST).is_file()
    manifest = read_manifest(data_path) if readable else None
    on_gpu = bool(int(cluster.gpus_per_node)) or plan.launcher == "local" and _local_cuda()
    resolved = resolve_config(cfg, manifest, None, on_gpu=on_gpu)
    errors = config_errors(resolved, plan.nodes * plan.procs_per_node, manifest,
                           check_data=readable, on_gpu=on_gpu)
    if errors:
        raise StageConfigRefused(plan.stage.module, errors)
    notes = [f"{plan.stage.module}: config valid for {plan.nodes * plan.procs_per_node} ranks"
             f" ({'BF16' if resolved.train.bf16 else 'fp32'}{' on GPUs' if on_gpu else ' on CPUs'})"]
    if not readable:
        notes.append(f"data.path={data_path!r} is not readable here: the data checks run on the first rank")
    return notes


def _local_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
