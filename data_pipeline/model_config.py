"""The per-language ``langs`` blocks of the model-based stages, checked: model paths resolved, thresholds numbers.

Shared by ``config.validate`` (the driver, before any work) and the stages
(every Ray worker), so a missing model file is reported once, up front, with
the key that names it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from data_pipeline.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]


def resolve_model_path(path: str) -> Path:
    """An absolute path as is; a relative one against the working directory, else against the repository.

    The fallback lets the shipped ``data/models/...`` defaults work from any directory and inside Ray
    workers, whose working directory need not be the driver's.
    """
    p = Path(os.path.expanduser(str(path)))
    if p.is_absolute() or p.exists():
        return p.resolve()
    return REPO_ROOT / p


def number(block: Any, key: str, where: str, low: float, high: float = float("inf")) -> float | None:
    """``block[key]`` as a float in [low, high], None when absent or null (the threshold is off)."""
    value = block.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f"config key '{where}.{key}': must be a number in [{low}, {high}] or null, got {value!r}")
    return float(value)


def lang_blocks(cfg: Any, key: str) -> dict[str, dict[str, Any]]:
    """``cfg.langs`` as {lang: block with ``model`` an existing absolute path}; ConfigError naming the key."""
    langs = cfg.get("langs") if hasattr(cfg, "get") else None
    if not hasattr(langs, "items") or not langs:
        raise ConfigError(f"config key '{key}.langs': must map languages to blocks with a model, "
                          f"e.g. {{en: {{model: data/models/...}}}}")
    out: dict[str, dict[str, Any]] = {}
    for lang, block in langs.items():
        where = f"{key}.langs.{lang}"
        if not hasattr(block, "get") or not block.get("model"):
            raise ConfigError(f"config key '{where}.model': is required (path to the model file)")
        path = resolve_model_path(block["model"])
        if not path.is_file():
            raise ConfigError(f"config key '{where}.model': '{block['model']}' does not exist (looked at {path})")
        out[str(lang)] = {**block, "model": str(path)}
    return out


def max_chars(cfg: Any, key: str) -> int | None:
    """``cfg.max_chars``: score only the document's first N characters (None: all)."""
    value = cfg.get("max_chars")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ConfigError(f"config key '{key}.max_chars': must be a positive integer or null, got {value!r}")
    return value
