"""One exception type for every failure the user can cause or fix.

The library raises `LoragenError` with a one-line message; the CLI prints that
line and exits 1. Anything else is a bug and keeps its traceback under
LORAGEN_DEBUG=1.
"""


class LoragenError(Exception):
    """A known, user-facing failure: bad input, missing object, conflict."""


class NotFound(LoragenError):
    """The named base, version, task or adapter is not in the registry."""


class InvalidAdapter(LoragenError):
    """An adapter folder or file that cannot be registered as it is."""
