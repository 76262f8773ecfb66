"""The trainer config: resolved against the data manifest and a checkpoint (resolve), then checked (validate)."""
