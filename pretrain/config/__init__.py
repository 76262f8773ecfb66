"""The trainer config: resolved against the data manifest and a checkpoint (resolve), then checked (validate)."""

from pretrain.config import schema as _schema  # noqa: E402,F401  registers pretrain_schema in Hydra's ConfigStore
