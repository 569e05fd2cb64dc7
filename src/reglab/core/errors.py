"""Errors a user can act on. Each message is one line: what is wrong, what to do."""


class ReglabError(Exception):
    """Base class: the stage prints the message alone (no traceback) and exits 2."""
