class HarnessError(ValueError):
    """A user-facing error: the CLI prints the message and exits with code 2."""
