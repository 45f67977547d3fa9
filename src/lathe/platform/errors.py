"""User-facing errors: the CLI prints them as one line, never a traceback."""


class LatheError(Exception):
    """Bad input from a user (config, file, request). The message is the whole story."""


class ConfigError(LatheError):
    """A config file or override is invalid. Message names the file and the key."""
