"""The per-document stages, and how the configured ``stages`` list becomes stage objects.

Every module in this package is imported here, in name order, so a new stage
registers by existing: no import list to extend. Name order is also the order
of the stages' columns in stage-1 tables (only storage order: rows are
processed in the order ``stages`` gives).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from data_pipeline.errors import ConfigError
from data_pipeline.stage import REGISTRY, DocumentStage

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")


def import_stage_modules(cfg: Any) -> None:
    """Import the modules ``stage_modules`` lists, so the stages they ``register`` can be named in ``stages``.

    For stages kept outside this package (a project's own filters, a test's). Called by ``validate`` in
    the driver and by ``build_stages`` in every Ray worker, since registration is per process.
    """
    for name in list(cfg.get("stage_modules") or []):
        try:
            importlib.import_module(str(name))
        except Exception as exc:
            raise ConfigError(f"config key 'stage_modules': cannot import '{name}': {type(exc).__name__}: {exc}") from exc


def stage_classes(names: list[str]) -> list[type[DocumentStage]]:
    """The classes ``stages`` names, in order; ConfigError naming the key for an unknown or misplaced one."""
    for i, name in enumerate(names):
        if name not in REGISTRY:
            raise ConfigError(f"config key 'stages': unknown stage '{name}'; known: {list(REGISTRY)}")
        for needed in REGISTRY[name].requires:
            if needed not in names[:i]:
                raise ConfigError(f"config key 'stages': '{name}' reads what '{needed}' adds to each document, "
                                  f"so '{needed}' must come before '{name}'")
    if len(set(names)) != len(names):
        raise ConfigError("config key 'stages': a stage is listed twice")
    return [REGISTRY[name] for name in names]


def build_stages(cfg: Any) -> list[DocumentStage]:
    """Stage objects for ``cfg.stages``, each given its config block: built once per batch, not per document."""
    import_stage_modules(cfg)
    stages = []
    for cls in stage_classes(list(cfg["stages"])):
        if cls.config_key is not None and cls.config_key not in cfg:
            raise ConfigError(f"config key '{cls.config_key}': is required by stage '{cls.name}'")
        stages.append(cls(cfg[cls.config_key] if cls.config_key is not None else None))
    return stages
