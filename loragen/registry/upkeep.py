"""The store's upkeep: `gc` removes what nothing references, `doctor` (verify_store) checks what is referenced.

Both look at every reference a row holds: adapters, base version files, generator checkpoints.
A generator's library is not a reference of its own: its adapters' files are kept by their adapter rows,
which `rm` refuses to remove while a library holds them. After `rm --force` nothing keeps them and gc
frees them like any removed adapter's; the generator stays broken (doctor lists it) until the adapter is
registered again from its files.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from loragen import adapters as adapter_io
from loragen.errors import LoragenError
from loragen.registry import db, library
from loragen.registry.blobs import BlobStore
from loragen.registry.models import Adapter, BaseModel, BaseVersion, BaseVersionFile, Blob, GeneratorCheckpointRow
from loragen.registry.readonly import converted_root
from loragen.registry.snapshots import DIGEST, relative_path_problem

# A work folder untouched this long belongs to no running command.
STALE_WORK_FOLDER_S = 3600


def blob_references(s: Session) -> dict[str, list[dict[str, str]]]:
    """Every blob a row points at, with who points at it: adapters, base version files, generator checkpoints."""
    references: dict[str, list[dict[str, str]]] = {}

    def add(sha: str, kind: str, ref: str, file: str) -> None:
        references.setdefault(sha, []).append({"kind": kind, "id": ref, "file": file})

    for uid, weights, config in s.execute(select(Adapter.uid, Adapter.weights_sha256, Adapter.config_sha256)):
        add(weights, "adapter", uid[:12], adapter_io.WEIGHTS_NAME)
        add(config, "adapter", uid[:12], adapter_io.CONFIG_NAME)
    for name, number, path, sha in s.execute(
            select(BaseModel.name, BaseVersion.version, BaseVersionFile.path, BaseVersionFile.blob_sha256)
            .join(BaseVersion, BaseVersionFile.version_id == BaseVersion.id)
            .join(BaseModel, BaseVersion.base_id == BaseModel.id)):
        add(sha, "base", f"{name}@v{number}", path)
    for uid, weights, meta in s.execute(
            select(GeneratorCheckpointRow.uid, GeneratorCheckpointRow.weights_sha256,
                   GeneratorCheckpointRow.meta_sha256)):
        add(weights, "generator", uid[:12], "weights")
        add(meta, "generator", uid[:12], "meta")
    return references


def gc(engine: Engine, blobs: BlobStore, home: Path, grace: float) -> dict[str, int]:
    """Delete blobs nothing references, and leftovers of interrupted writes.

    Unreferenced blobs written (or stored again) within the grace period stay: a writer
    may be about to register them (git's prune expiry). Safe beside any writer at any
    grace, 0 included: deciding and deleting happen under the store's exclusive lock,
    and writers re-store a staged file gc removed before they take the lock.
    """
    if grace < 0:
        raise LoragenError(f"the gc grace period must be >= 0 seconds (got {grace})")
    cutoff = time.time() - grace
    removed = freed = kept = 0
    with db.transaction(engine) as s:
        db.lock_store(s, exclusive=True)
        referenced = blob_references(s)
        rows = set(s.scalars(select(Blob.sha256)))
        dead_rows = []
        for sha in sorted((rows | set(blobs.digests())) - referenced.keys()):
            # A row whose digest is no sha256 names no file of the store: drop the row, touch no file.
            modified = blobs.modified_at(sha) if DIGEST.fullmatch(sha) else None
            if modified is not None and modified >= cutoff:
                kept += 1
                continue
            if modified is not None:
                freed += blobs.remove(sha)
                removed += 1
            if sha in rows:
                dead_rows.append(sha)
        for start in range(0, len(dead_rows), 500):
            s.execute(delete(Blob).where(Blob.sha256.in_(dead_rows[start:start + 500])))
    return {"blobs_removed": removed, "bytes_freed": freed, "blobs_kept_in_grace": kept,
            "temp_files_removed": blobs.clean_tmp() + clean_work_folders(home)}


def clean_work_folders(home: Path, older_than_s: float = STALE_WORK_FOLDER_S) -> int:
    """Remove `loragen-*` work folders (generate, train, selection) and the staging folders of converted GGUF
    bases (`snapshots/converted/.<digest>-*`) that a killed process left behind.

    Only folders untouched for `older_than_s`, so a command still running beside gc keeps its own.
    """
    cutoff = time.time() - older_than_s
    removed = 0
    for folder in [*home.glob("loragen-*"), *converted_root(home).glob(".*")]:
        if folder.is_dir() and folder.stat().st_mtime < cutoff:
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


def verify_store(engine: Engine, blobs: BlobStore,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Re-hash every blob a row references; report the missing and damaged ones, rows whose stored file
    name or digest is not a path inside the store (a store's fsck), and broken generator libraries.

    Runs beside writers and gc without holding a lock while it hashes; what looks
    wrong is looked at again under the store's lock, so a blob unregistered and
    collected meanwhile is not reported.
    """
    with db.transaction(engine) as s:
        referenced = blob_references(s)
        sizes = dict(s.execute(select(Blob.sha256, Blob.size)).all())
        problems = _unsafe_references(s, referenced)
    shas = sorted(sha for sha in referenced if DIGEST.fullmatch(sha))
    suspects = []
    for done, sha in enumerate(shas, 1):
        if blobs.verify(sha) != "ok":
            suspects.append(sha)
        if progress:
            progress(done, len(shas))
    if suspects:
        with db.transaction(engine) as s:
            db.lock_store(s, exclusive=False)
            still = blob_references(s)
            for sha in suspects:
                state = blobs.verify(sha) if sha in still else "ok"
                if state != "ok":
                    problems.append({"sha256": sha, "problem": state, "referenced_by": still[sha]})
    unreferenced = [sha for sha in blobs.digests() if sha not in referenced]
    broken_libraries = check_libraries(engine, {p["sha256"]: p["problem"] for p in problems})
    return {"ok": not problems and not broken_libraries, "blobs_checked": len(shas),
            "bytes_checked": sum(sizes.get(sha, 0) for sha in shas), "problems": problems,
            "broken_libraries": broken_libraries, "unreferenced_blobs": len(unreferenced),
            "temp_files": len(blobs.temp_files())}


def check_libraries(engine: Engine, blob_problems: dict[str, str]) -> list[dict[str, Any]]:
    """Every generator library entry whose adapter is removed, or whose weights file is missing or changed.

    A registered library adapter's file is one of the referenced blobs verify_store has just re-hashed:
    `blob_problems` (digest -> missing/damaged) is what that pass found, so nothing is hashed twice.
    """
    with db.transaction(engine) as s:
        links = library.links(s)
    return library.broken_entries(links, lambda sha: blob_problems.get(sha, "ok"))


def _unsafe_references(s: Session, referenced: dict[str, list[dict[str, str]]]) -> list[dict[str, Any]]:
    """Rows that name a file outside its folder (`../../victim`) or a digest that is no sha256: the commands
    that read them refuse them (loragen.registry.snapshots), and doctor says which they are."""
    problems = []
    for sha, users in sorted(referenced.items()):
        if not DIGEST.fullmatch(sha):
            problems.append({"sha256": sha, "problem": "bad digest", "referenced_by": users})
            continue
        bad = [user for user in users if user["kind"] == "base" and relative_path_problem(user["file"])]
        if bad:
            problems.append({"sha256": sha, "problem": "bad path", "referenced_by": bad})
    for name, number, gguf_file in s.execute(
            select(BaseModel.name, BaseVersion.version, BaseVersion.gguf_file)
            .join(BaseModel, BaseVersion.base_id == BaseModel.id).where(BaseVersion.gguf_file.is_not(None))):
        if relative_path_problem(gguf_file):
            problems.append({"sha256": "", "problem": "bad path",
                             "referenced_by": [{"kind": "base", "id": f"{name}@v{number}", "file": gguf_file}]})
    return problems
