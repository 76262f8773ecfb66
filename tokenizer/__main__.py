"""`python -m tokenizer input=DATA_DIR output=TOK_DIR [tokenizer=52b] [steps=[...]]`."""

from __future__ import annotations

import logging
import warnings

import hydra
from omegaconf import DictConfig

# megatron.core's package import warns about optional GPU kernels we never use here.
warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")

from tokenizer.pipeline import run_pipeline


@hydra.main(config_path="../configs", config_name="tokenizer", version_base=None)
def main(cfg: DictConfig) -> None:
    # Hydra logs at INFO; megatron-core's per-file index messages would bury the summary.
    logging.getLogger("megatron").setLevel(logging.WARNING)
    run_pipeline(cfg)


if __name__ == "__main__":
    main()
