"""User-facing errors: the CLI prints their message and exits 2, without a traceback."""


class LabError(Exception):
    """A mistake in what the user asked for (config, ablation file, storage, CLI use)."""

    exit_code = 2


class ConfigError(LabError):
    """A config key with an invalid value; the message names the key."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"config key '{key}': {message}")
