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


def quoted(value: object, limit: int = 60) -> str:
    """A user-supplied name, reference or description as an error message shows it: quoted, on one line,
    and cut to its first `limit` characters (with its length) when longer, so a pasted essay stays a short error."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))
    if len(text) <= limit:
        return f"'{text}'"
    return f"'{text[:limit]}…' ({len(str(value))} characters)"
