"""The pipeline's configuration error, in a module of its own so that the config
validator and the stages it validates can both raise it without importing each other."""


class ConfigError(ValueError):
    """A bad configuration value; the message names the key."""
