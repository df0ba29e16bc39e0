"""What a name or a description from outside (the command line, a task folder) may hold.

Checked before anything is built from it: a name becomes a folder or file name (so it must
never hold a path), and a description is stored and printed later (so it must be text a
terminal only shows). Standard library only: listing the bundled tasks uses it.
"""

from __future__ import annotations

import re
import unicodedata

from loragen.errors import LoragenError, quoted

MAX_NAME_LENGTH = 200
# ASCII on purpose: names are typed in shells and compared byte for byte. The registry's rule too
# (loragen.registry.refs imports it from here).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Whitespace a description may span lines with: stored as single spaces, so never printed raw.
WHITESPACE_CONTROLS = "\t\n\r"


def check_name(kind: str, name: str, where: str = "") -> None:
    """Refuse a name that is not letters, digits, '.', '_' and '-' (so no '/', '..' start, space or control character).

    `where` names the file the name came from, for the message."""
    source = f"{where}: " if where else ""
    if not isinstance(name, str):
        raise LoragenError(f"{source}{kind} name must be a string, not {quoted(name)}")
    if len(name) > MAX_NAME_LENGTH:
        raise LoragenError(f"{source}{kind} name {quoted(name)} is too long: at most {MAX_NAME_LENGTH} characters")
    if not NAME_PATTERN.fullmatch(name):
        raise LoragenError(f"{source}invalid {kind} name {quoted(name)}: start with a letter or digit, then use "
                           "letters, digits, '.', '_' and '-' (no '@', '/' or spaces)")


def check_text(what: str, text: str) -> None:
    """Refuse text that is not valid UTF-8 or that holds control characters.

    Python hands over command-line bytes that are not UTF-8 as lone surrogates, which no database or
    file can store. Control characters (ESC, BEL, backspace, …) would act on the terminal of whoever
    lists the text later; tabs and newlines are whitespace and allowed."""
    if text.isprintable():  # the common case, in one C loop
        return
    if any(unicodedata.category(c) == "Cs" for c in text):
        raise LoragenError(f"{what} {quoted(text)} is not valid UTF-8")
    control = next((c for c in text if unicodedata.category(c) == "Cc" and c not in WHITESPACE_CONTROLS), None)
    if control is not None:
        raise LoragenError(f"{what} {quoted(text)} holds the control character {quoted(control)}: "
                           "give plain text")
