"""Where the migrations are and which revision is their head, without importing Alembic.

Every command checks the database's schema revision before it reads; importing Alembic and
building its ScriptDirectory for that check cost about a third of a second a command on a
2-core machine. The head is read from the migration files' `revision` / `down_revision`
lines instead; Alembic itself runs only when there is something to upgrade.
"""

from __future__ import annotations

import re
from pathlib import Path

from loragen.errors import LoragenError

_REVISION = re.compile(r"^revision\s*(?::[^=\n]*)?=\s*['\"]([^'\"]+)['\"]", re.MULTILINE)
_DOWN_REVISION = re.compile(r"^down_revision\s*(?::[^=\n]*)?=\s*(?:['\"]([^'\"]+)['\"]|(None))\s*$", re.MULTILINE)


def migrations_dir() -> Path:
    """Migrations ship inside the wheel as loragen/_migrations; a source checkout has migrations/."""
    package_dir = Path(__file__).resolve().parent.parent
    for candidate in (package_dir / "_migrations", package_dir.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise LoragenError("the registry's migrations are missing from this installation")


def head_revision_fast(directory: Path | None = None) -> str | None:
    """The one revision no other revision builds on; None when the files don't say plainly
    (a merge, several heads, a line this parser does not know), and Alembic must decide."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (directory or migrations_dir() / "versions").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        revision, down = _REVISION.search(text), _DOWN_REVISION.search(text)
        if revision is None or down is None:
            return None
        revisions.add(revision.group(1))
        if down.group(1):
            parents.add(down.group(1))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def known_revisions(directory: Path | None = None) -> set[str]:
    """Every revision this code's migrations define: a database stamped with another was written by a newer loragen."""
    found = set()
    for path in (directory or migrations_dir() / "versions").glob("*.py"):
        revision = _REVISION.search(path.read_text(encoding="utf-8"))
        if revision is not None:
            found.add(revision.group(1))
    return found
