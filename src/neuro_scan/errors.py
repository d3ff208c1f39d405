"""The one error type for bad user input: the CLI prints its message on one line and exits 2."""


class UsageError(Exception):
    """Bad input from the user (option, file, model id). The message names what is wrong and what is allowed."""
