"""Errors meant for the person at the terminal: the CLI prints them as one line, no traceback."""


class UserError(Exception):
    """A problem with the user's input (a file, a flag, a value) rather than a bug."""
