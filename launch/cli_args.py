"""Split ``python -m launch`` arguments into launcher overrides and stage overrides.

The command line mixes both on purpose (``stage=pretrain cluster=a800
model=52b parallel=teleflm_52b``): the launcher's keys are those of
configs/launch.yaml plus ``cluster.*``/``hydra.*``; everything else belongs to
the stage and is packed, quoted, into one ``stage_args=[...]`` override so
Hydra never tries to interpret it. Under ``-m`` a stage override with a sweep
(``optimizer.lr=1e-4,2e-4``) is expanded here into a choice sweep over whole
stage_args lists, so Hydra's sweeper (and the submitit launcher's job array)
still sees one job per combination.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

from omegaconf import OmegaConf

LAUNCH_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "launch.yaml"
ALWAYS_LAUNCHER_PREFIXES = ("hydra", "cluster")


def launcher_keys() -> set[str]:
    raw = OmegaConf.load(LAUNCH_CONFIG)
    return {str(k) for k in raw.keys() if k not in ("defaults", "hydra")} | {"cluster", "hydra"}


def _key_of(arg: str) -> str:
    return arg.lstrip("+~").partition("=")[0]


def is_launcher_arg(arg: str, keys: set[str]) -> bool:
    if arg.startswith("-"):  # -m, --multirun, --cfg job, ...
        return True
    key = _key_of(arg)
    root = re.split(r"[./]", key, maxsplit=1)[0]
    return root in keys or root in ALWAYS_LAUNCHER_PREFIXES


def _split_top_level_commas(value: str) -> list[str]:
    """`a,b` -> [a, b]; commas inside brackets, parentheses or quotes do not split."""
    parts, depth, quote, current = [], 0, None, []
    for ch in value:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def _quote(arg: str) -> str:
    """A Hydra single-quoted string that OmegaConf keeps literal (no ${...} resolution)."""
    escaped = arg.replace("\\", "\\\\").replace("'", "\\'").replace("${", "\\${")
    return f"'{escaped}'"


def _hydra_list(args: list[str]) -> str:
    return "[" + ",".join(_quote(a) for a in args) + "]"


def split_argv(argv: list[str]) -> list[str]:
    """Return the argv Hydra should see: launcher args as they are, plus one stage_args override."""
    keys = launcher_keys()
    multirun = any(a in ("-m", "--multirun") for a in argv)
    launcher_args, stage_args = [], []
    for arg in argv:
        (launcher_args if is_launcher_arg(arg, keys) else stage_args).append(arg)
    if not stage_args:
        return launcher_args
    if not multirun:
        return [*launcher_args, "stage_args=" + _hydra_list(stage_args)]
    choices: list[list[str]] = []
    for arg in stage_args:
        key, sep, value = arg.partition("=")
        values = _split_top_level_commas(value) if sep else [value]
        choices.append([f"{key}={v}" for v in values] if sep else [arg])
    combos = [list(c) for c in itertools.product(*choices)]
    return [*launcher_args, "stage_args=" + ",".join(_hydra_list(c) for c in combos)]
