"""A registry this process may read but not write: a home shared read-only, a read-only mount.

The read commands (list, show, doctor, export) serve it: SQLite opens the file read-only, no schema
upgrade or write is tried, and snapshot folders (links for loading a base) go to the user's cache.
Light on purpose: the read side imports it before anything heavy.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import quote


def read_only_file(path: Path) -> bool:
    """Whether a SQLite file exists that this process may not write, or whose folder it may not write
    (SQLite writes its journal files beside it). access() answers for root as well: a read-only mount."""
    return path.is_file() and not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK))


def read_only_uri(path: Path) -> str:
    """A sqlite3 URI that reads `path` without writing anything.

    A WAL database is read through its -shm file; in a folder we cannot write, where no -shm file was
    left, SQLite can read the file only as immutable (nobody can write there either, bar its owner)."""
    shm = path.with_name(path.name + "-shm")
    mode = "mode=ro" if shm.exists() or os.access(path.parent, os.W_OK) else "immutable=1"
    return f"file:{quote(str(path.resolve()))}?{mode}"


def snapshots_root(home: Path) -> Path:
    """Where snapshot folders go: the home's own, or the user's cache when the home cannot be written."""
    if os.access(home, os.W_OK):
        return home / "snapshots"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "loragen" / "snapshots" / hashlib.sha256(str(home).encode()).hexdigest()[:16]


def converted_root(home: Path) -> Path:
    """Where GGUF bases are kept dequantized (one folder per weights digest) and staged while being written."""
    return snapshots_root(home) / "converted"
