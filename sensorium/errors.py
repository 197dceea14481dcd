"""Errors that carry a one-line, user-facing reason (the CLI prints them and exits non-zero)."""


class UserError(Exception):
    """Bad input from the user: the message names the file, key or value and what was expected."""


class ConfigError(UserError):
    """An invalid experiment or search configuration."""


class DataError(UserError):
    """A scan (folder or zip) that is missing files, has wrong shapes or dtypes, or non-finite values."""


class SearchInterrupted(Exception):
    """A search stopped by Ctrl-C or SIGTERM before its trials ended; the message holds the resume command.

    The CLI prints it on one line and exits with 130 (interrupted), so a batch script can tell it from a
    finished search (0) and from bad input (2).
    """


def one_line(err: BaseException) -> str:
    """One line (at most 500 characters) naming an exception and its message, for records and results."""
    return f"{type(err).__name__}: {err}".splitlines()[0][:500]
