"""Exceptions shared across modules."""


class CommandError(Exception):
    """A clear, one-line failure of a CLI command that the user can fix (exit status 1)."""


class RetryLater(Exception):
    """Not now: leave the stream entry pending; recovery picks it up again later."""


class ConfigError(Exception):
    """The service cannot run as configured; like a bad setting, it exits 2."""
