"""A generator's library: the registered adapters its output blends, and what can break it.

A generator that emits coefficients over a library is only as good as those adapters' exact weights, so
each entry records the adapter's uid, task, base and weights digest as they were when it was trained.
An entry is broken when its adapter is no longer registered (`rm --force`), when the adapter's weights
file is gone from the blob store, or when the file's bytes no longer hash to the recorded digest.
`Registry.generator_library` refuses a broken library in one line; `doctor` lists every broken entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from loragen.registry.models import Adapter, GeneratorCheckpointRow, GeneratorLibraryEntry

Problem = Literal["removed", "missing", "changed"]


@dataclass(frozen=True)
class LibraryLink:
    """One library entry beside what the registry holds for its adapter now (plain data, no ORM row)."""

    generator_uid: str
    position: int
    adapter_uid: str
    task: str
    base: str                      # NAME@vN
    weights_sha256: str            # the digest the generator was trained on
    registered_sha256: str | None  # the adapter row's digest now; None: the adapter is no longer registered

    def view(self) -> dict[str, Any]:
        return {"uid": self.adapter_uid, "id": self.adapter_uid[:12], "task": self.task, "base": self.base,
                "weights_sha256": self.weights_sha256}


def links(s: Session, generator_id: int | None = None) -> list[LibraryLink]:
    """Library entries in order (one generator's, or every generator's by registration), each with its adapter."""
    query = (select(GeneratorCheckpointRow.uid, GeneratorLibraryEntry, Adapter.weights_sha256)
             .join(GeneratorCheckpointRow, GeneratorLibraryEntry.generator_id == GeneratorCheckpointRow.id)
             .outerjoin(Adapter, Adapter.uid == GeneratorLibraryEntry.adapter_uid))
    if generator_id is not None:
        query = query.where(GeneratorLibraryEntry.generator_id == generator_id)
    rows = s.execute(query.order_by(GeneratorLibraryEntry.generator_id, GeneratorLibraryEntry.position))
    return [LibraryLink(generator_uid=uid, position=entry.position, adapter_uid=entry.adapter_uid, task=entry.task,
                        base=entry.base, weights_sha256=entry.weights_sha256, registered_sha256=registered)
            for uid, entry, registered in rows]


def problem(link: LibraryLink, blob_state: Callable[[str], str]) -> Problem | None:
    """What breaks this entry, if anything; `blob_state(sha)` says whether the stored file is ok, missing or damaged
    (re-hashed by the caller: generate hashes it now, doctor reuses its own pass)."""
    if link.registered_sha256 is None:
        return "removed"
    if link.registered_sha256 != link.weights_sha256:  # the same uid registered again over other weights
        return "changed"
    state = blob_state(link.weights_sha256)
    if state == "ok":
        return None
    return "missing" if state == "missing" else "changed"


def broken_message(link: LibraryLink, found: Problem) -> str:
    """One line: which generator, which library adapter, what happened to it, and what to do."""
    adapter = f"library adapter {link.adapter_uid[:12]} ({link.task} on {link.base})"
    what = {
        "removed": "is no longer registered: register it again (ingest the same files for the same task and base) "
                   "or train a new generator",
        "missing": "has lost its weights file from the blob store: register the adapter again (ingest the same files) "
                   "or train a new generator",
        "changed": f"has weights that differ from the ones it was trained on (sha256 {link.weights_sha256[:12]}): "
                   "restore the adapter's file (`loragen doctor` names it) or train a new generator",
    }[found]
    return f"generator {link.generator_uid[:12]}: {adapter} {what}"


def broken_entries(found: list[LibraryLink], blob_state: Callable[[str], str]) -> list[dict[str, Any]]:
    """Every broken entry of these links, as `doctor` reports it."""
    report = []
    for link in found:
        kind = problem(link, blob_state)
        if kind is not None:
            report.append({"generator": link.generator_uid[:12], "position": link.position, **link.view(),
                           "problem": kind, "message": broken_message(link, kind)})
    return report
