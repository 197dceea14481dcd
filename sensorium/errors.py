"""Errors that carry a one-line, user-facing reason (the CLI prints them and exits non-zero)."""


class UserError(Exception):
    """Bad input from the user: the message names the file, key or value and what was expected."""


class ConfigError(UserError):
    """An invalid experiment or search configuration."""


class DataError(UserError):
    """A scan (folder or zip) that is missing files, has wrong shapes or dtypes, or non-finite values."""
