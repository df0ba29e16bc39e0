"""Folders of links into the blob store (like the HF cache's snapshots), and the checks that keep every
path read from the database inside the folder it names.

A registry.db is input like any other: a row's file path or digest becomes a path on disk here, so each
is checked where it is read. A planted `../../victim` must not make `export` replace a file outside the
home, and `doctor` must name such a row (see loragen.registry.upkeep).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from loragen.errors import LoragenError, quoted

DIGEST = re.compile(r"[0-9a-f]{64}")
TAMPERED = "the registry database is damaged or was edited by hand (`loragen doctor` lists such rows)"


def relative_path_problem(relpath: object) -> str | None:
    """Why a stored file name cannot be a path inside its folder, or None when it can."""
    if not isinstance(relpath, str) or not relpath:
        return "not a file name"
    if "\\" in relpath or "\0" in relpath or not relpath.isprintable():
        return "not a plain file name"
    if relpath.startswith("/"):
        return "an absolute path"
    if any(part in ("", ".", "..") for part in relpath.split("/")):
        return "a path that leaves its folder"
    return None


def stored_relative_path(relpath: str, what: str) -> str:
    """A file name read from the database, refused unless it stays inside its folder."""
    problem = relative_path_problem(relpath)
    if problem:
        raise LoragenError(f"{what} is stored as {quoted(relpath)}, {problem}: {TAMPERED}")
    return relpath


def stored_digest(value: str, what: str) -> str:
    """A sha256 (or uid) read from the database, refused unless it is 64 lowercase hex digits."""
    if not isinstance(value, str) or not DIGEST.fullmatch(value):
        raise LoragenError(f"{what} is stored as {quoted(value)}, not a sha256 digest: {TAMPERED}")
    return value


def inside(folder: Path, relpath: str, what: str) -> Path:
    """folder/relpath, once relpath is checked and its parent resolves inside folder (no link leads out)."""
    path = folder / stored_relative_path(relpath, what)
    if not path.parent.resolve().is_relative_to(folder.resolve()):
        raise LoragenError(f"{what} {quoted(relpath)} leads out of {folder} through a link: {TAMPERED}")
    return path


def link_files(folder: Path, files: dict[str, Path]) -> None:
    """Point folder/<name> at each stored blob, atomically per link; every name stays inside folder."""
    for name, target in files.items():
        link = inside(folder, name, "a file of a snapshot folder")
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp_link = link.with_name(f".{link.name}.{os.getpid()}.tmp")
        tmp_link.unlink(missing_ok=True)
        tmp_link.symlink_to(target)
        os.replace(tmp_link, link)
