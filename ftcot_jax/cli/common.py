"""What every command shares: the user-facing error type."""


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2, no traceback."""
