"""CLI: ``python -m data_pipeline input=PATH_OR_GLOB output=DIR [overrides]``.

Hydra gives every config key a command-line override (``dedup.bands=32``,
``ray.address=auto``) and records the resolved config of each run under
``DIR/.hydra_run``.
"""

from __future__ import annotations

import json
import sys

import hydra
from omegaconf import DictConfig

from data_pipeline.config import ConfigError


@hydra.main(config_path="../configs", config_name="data_pipeline", version_base=None)
def main(cfg: DictConfig) -> None:
    from data_pipeline.pipeline import run

    try:
        summary = run(cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
