"""The registry's operations: what the CLI commands do, as library calls.

Every write follows one order: check everything, copy the files into the blob
store (idempotent, content-addressed), then register the metadata in a single
transaction. A crash before the commit leaves at most an unreferenced blob,
which `gc` removes; it never leaves a half-registered adapter.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from loragen import adapters as adapter_io
from loragen.bases import Architecture, BaseSource, read_architecture, resolve_source, weights_digest
from loragen.config import RegistryConfig
from loragen.errors import LoragenError, NotFound
from loragen.registry import db
from loragen.registry.blobs import BlobStore
from loragen.registry.models import (
    Adapter, BaseModel, BaseVersion, BaseVersionFile, Blob, EvalResult, GeneratorCheckpointRow, Origin, Task,
    TaskDescription)
from loragen.registry.views import (  # noqa: F401  (parse_base_ref, MIN_ID_PREFIX: part of this module's API)
    MIN_ID_PREFIX, EngineReader, Views, adapter_view, id_prefix_range, no_such_base, no_such_version, parse_base_ref)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


@dataclass
class Registered:
    """The outcome of a registration: the row's id and whether it is new."""

    id: str
    created: bool


# A work folder untouched this long belongs to no running command.
STALE_WORK_FOLDER_S = 3600


def _check_name(kind: str, name: str) -> None:
    if not NAME_PATTERN.match(name):
        raise LoragenError(f"invalid {kind} name '{name}': use letters, digits, '.', '_' and '-' (no '@' or spaces)")


class Registry:
    def __init__(self, config: RegistryConfig):
        self.config = config
        self.home = config.home_path
        self.home.mkdir(parents=True, exist_ok=True)
        self.blobs = BlobStore(self.home / "blobs")
        self.engine = db.make_engine(config.database_url)
        db.ensure_schema(self.engine, self.home / "registry.lock")
        # The read side (list, show): plain SQL over the same engine, one definition per view.
        self.views = Views(EngineReader(self.engine))

    def session(self):
        return db.transaction(self.engine)

    # ---------------------------------------------------------------- blobs

    def _store_file(self, session: Session, path: Path, media_type: str) -> str:
        sha, size = self.blobs.put_file(path)
        self._record_blob(session, sha, size, media_type)
        return sha

    def _record_blob(self, session: Session, sha: str, size: int, media_type: str) -> None:
        if session.get(Blob, sha) is not None:
            return
        try:
            with session.begin_nested():  # a savepoint: losing a race must not abort the transaction
                session.add(Blob(sha256=sha, size=size, media_type=media_type))
        except IntegrityError:
            pass  # another process recorded the same bytes meanwhile (PostgreSQL; SQLite serialises writers)

    def blob_path(self, sha: str) -> Path:
        path = self.blobs.path(sha)
        if not path.is_file():
            raise LoragenError(f"blob {sha[:12]} is missing from {self.blobs.root}: the store is damaged")
        return path

    # ---------------------------------------------------------------- bases

    def resolve_version(self, session: Session, ref: str) -> BaseVersion:
        name, version = parse_base_ref(ref)
        base = session.scalar(select(BaseModel).where(BaseModel.name == name))
        if base is None:
            raise no_such_base(name, session.scalars(select(BaseModel.name).order_by(BaseModel.name)).all())
        query = select(BaseVersion).where(BaseVersion.base_id == base.id).options(selectinload(BaseVersion.base))
        if version is None:
            found = session.scalar(query.order_by(BaseVersion.version.desc()).limit(1))
        else:
            found = session.scalar(query.where(BaseVersion.version == version))
        if found is None:
            raise no_such_version(name, version)
        return found

    def add_base(self, name: str, source_spec: str, note: str = "") -> Registered:
        """Register a new base model: its version 1."""
        _check_name("base", name)
        with self.session() as s:
            if s.scalar(select(BaseModel).where(BaseModel.name == name)) is not None:
                raise LoragenError(f"base '{name}' already exists: use `loragen base update {name} --from PATH` for a new version")
        source = resolve_source(source_spec)
        architecture = read_architecture(source)
        digest = weights_digest(source)
        with self.session() as s:
            base = BaseModel(name=name, architecture=architecture.model_type)
            s.add(base)
            try:
                s.flush()
            except IntegrityError:
                raise LoragenError(f"base '{name}' already exists") from None
            version = self._add_version(s, base, 1, None, source, architecture, digest, note or "initial version")
            return Registered(id=f"{name}@v{version.version}", created=True)

    def update_base(self, name: str, source_spec: str, note: str = "") -> Registered:
        """Register an evolved version: same architecture, new weights."""
        with self.session() as s:
            latest = self.resolve_version(s, name)
        source = resolve_source(source_spec)
        architecture = read_architecture(source)
        _check_same_architecture(latest, architecture)
        digest = weights_digest(source)
        with self.session() as s:
            same = s.scalar(select(BaseVersion).where(BaseVersion.base_id == latest.base_id,
                                                      BaseVersion.weights_digest == digest))
            if same is not None:
                raise LoragenError(f"these weights are already registered as {name}@v{same.version}")
            base = s.get(BaseModel, latest.base_id)
            newest = s.scalar(select(func.max(BaseVersion.version)).where(BaseVersion.base_id == base.id))
            version = self._add_version(s, base, newest + 1, latest.id, source, architecture, digest, note)
            return Registered(id=f"{name}@v{version.version}", created=True)

    def _add_version(self, s: Session, base: BaseModel, number: int, parent_id: int | None,
                     source: BaseSource, architecture: Architecture, digest: str, note: str) -> BaseVersion:
        version = BaseVersion(
            base_id=base.id, version=number, parent_id=parent_id, note=note, source=source.description,
            gguf_file=source.gguf_file, config=architecture.config, linear_shapes=architecture.linear_shapes,
            weights_digest=digest, num_parameters=architecture.num_parameters)
        s.add(version)
        s.flush()
        for relpath in source.files:
            sha = self._store_file(s, source.folder / relpath, _media_type(relpath))
            s.add(BaseVersionFile(version_id=version.id, path=relpath, blob_sha256=sha))
        s.flush()
        return version

    def base_folder(self, version: BaseVersion) -> Path:
        """A folder of links to the version's blobs that transformers can load (like the HF cache's snapshots)."""
        folder = self.home / "snapshots" / version.weights_digest[:16]
        with self.session() as s:
            files = s.scalars(select(BaseVersionFile).where(BaseVersionFile.version_id == version.id)).all()
        self._link_files(folder, {entry.path: self.blob_path(entry.blob_sha256) for entry in files})
        return folder

    def load_base(self, ref: str, dtype: str = "float32"):
        """(model, tokenizer, version) for a base reference, loaded from the store."""
        from loragen.bases import load_model

        with self.session() as s:
            version = self.resolve_version(s, ref)
        model, tokenizer = load_model(self.base_folder(version), version.gguf_file, dtype=dtype)
        return model, tokenizer, version

    def list_bases(self) -> list[dict[str, Any]]:
        return self.views.bases()

    # ---------------------------------------------------------------- tasks

    def ensure_task(self, s: Session, name: str, descriptions: Iterable[str] = ()) -> Task:
        _check_name("task", name)
        task = s.scalar(select(Task).where(Task.name == name))
        if task is None:
            try:
                with s.begin_nested():
                    task = Task(name=name)
                    s.add(task)
            except IntegrityError:  # another process created it meanwhile (PostgreSQL)
                task = s.scalar(select(Task).where(Task.name == name))
        known = set(s.scalars(select(TaskDescription.text).where(TaskDescription.task_id == task.id)))
        for text in descriptions:
            text = " ".join(text.split())
            if text and text not in known:
                s.add(TaskDescription(task_id=task.id, text=text))
                known.add(text)
        s.flush()
        return task

    def add_task(self, name: str, descriptions: Iterable[str]) -> Registered:
        with self.session() as s:
            existed = s.scalar(select(Task).where(Task.name == name)) is not None
            self.ensure_task(s, name, descriptions)
        return Registered(id=name, created=not existed)

    def list_tasks(self) -> list[dict[str, Any]]:
        return self.views.tasks()

    def task_descriptions(self, name: str) -> list[str]:
        with self.session() as s:
            task = s.scalar(select(Task).where(Task.name == name).options(selectinload(Task.descriptions)))
            if task is None:
                raise NotFound(f"no task named '{name}'")
            return [d.text for d in task.descriptions]

    # ---------------------------------------------------------------- adapters

    def ingest(self, path: Path, base_ref: str, task: str, descriptions: Iterable[str] = (),
               origin: Origin = Origin.ingested, provenance: dict[str, Any] | None = None,
               replaces: str | None = None) -> Registered:
        """Validate a PEFT folder against a base version, then register it."""
        path = Path(path)
        _check_name("task", task)
        with self.session() as s:
            version = self.resolve_version(s, base_ref)
        folder = adapter_io.read_adapter_folder(path)
        adapter_io.check_against_base(folder, version.linear_shapes, version.label)
        adapter_io.load_weights(folder.weights_path)  # refuses NaN/Inf, proves the bytes load
        provenance = dict(provenance or {})
        if origin is Origin.ingested:
            provenance.setdefault("source", str(path.resolve()))
        with self.session() as s:
            weights_sha = self._store_file(s, folder.weights_path, "application/vnd.safetensors")
            config_sha = self._store_file(s, folder.config_path, "application/json")
            uid = hashlib.sha256(f"{weights_sha}|{task}|{version.id}".encode()).hexdigest()
            existing = s.scalar(select(Adapter).where(Adapter.uid == uid))
            if existing is not None:
                return Registered(id=uid[:12], created=False)
            task_row = self.ensure_task(s, task, descriptions)
            replaces_id = self._find_adapter(s, replaces).id if replaces else None
            try:
                with s.begin_nested():
                    s.add(Adapter(
                        uid=uid, task_id=task_row.id, base_version_id=version.id, origin=origin,
                        rank=folder.rank, alpha=folder.alpha, target_modules=folder.target_leaf_names(),
                        num_parameters=folder.num_parameters, weights_sha256=weights_sha, config_sha256=config_sha,
                        provenance=provenance, replaces_id=replaces_id))
            except IntegrityError:  # the same adapter, registered by another process meanwhile
                return Registered(id=uid[:12], created=False)
            return Registered(id=uid[:12], created=True)

    def _find_adapter(self, s: Session, ref: str) -> Adapter:
        low, high = id_prefix_range(ref)  # a range on the uid's unique index, not a LIKE scan
        in_range = (Adapter.uid >= low, Adapter.uid < high) if high else (Adapter.uid >= low,)
        matches = s.scalars(select(Adapter).where(*in_range).options(
            selectinload(Adapter.task), selectinload(Adapter.base_version).selectinload(BaseVersion.base)).limit(2)).all()
        if not matches:
            raise NotFound(f"no adapter with id {low}")
        if len(matches) > 1:
            raise NotFound(f"adapter id {low} is ambiguous: give more characters")
        return matches[0]

    def get_adapter(self, ref: str) -> dict[str, Any]:
        """One adapter by id prefix, with its evaluations."""
        return self.views.adapter(ref)

    def list_adapters(self, task: str | None = None, base_ref: str | None = None,
                      origin: str | None = None) -> list[dict[str, Any]]:
        """Adapters oldest first; `loragen list` streams the same rows from self.views.adapters."""
        return list(self.views.adapters(task=task, base=base_ref, origin=origin))

    def adapter_files(self, ref: str) -> tuple[Path, Path, dict[str, Any]]:
        """(weights blob, config blob, view) of an adapter, for export and loading."""
        with self.session() as s:
            adapter = self._find_adapter(s, ref)
            return self.blob_path(adapter.weights_sha256), self.blob_path(adapter.config_sha256), _adapter_view(adapter)

    def export(self, ref: str, out_dir: Path) -> Path:
        """Write a folder that peft.PeftModel.from_pretrained loads, byte-identical to what was stored."""
        import shutil

        from loragen.atomic import staged_folder

        weights, config, view = self.adapter_files(ref)
        out_dir = Path(out_dir)
        if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
            raise LoragenError(f"{out_dir}: already exists and is not empty")
        with staged_folder(out_dir) as staging:
            shutil.copyfile(weights, staging / adapter_io.WEIGHTS_NAME)
            shutil.copyfile(config, staging / adapter_io.CONFIG_NAME)
        return out_dir

    def remove(self, ref: str) -> str:
        """Unregister an adapter (its blobs stay until `gc`)."""
        with self.session() as s:
            adapter = self._find_adapter(s, ref)
            for child in s.scalars(select(Adapter).where(Adapter.replaces_id == adapter.id)):
                child.replaces_id = None
            uid = adapter.uid[:12]
            s.delete(adapter)
            return uid

    def gc(self) -> dict[str, int]:
        """Delete blobs no adapter or base version references, and leftovers of interrupted writes."""
        with self.session() as s:
            used = set(s.scalars(select(Adapter.weights_sha256))) | set(s.scalars(select(Adapter.config_sha256)))
            used |= set(s.scalars(select(BaseVersionFile.blob_sha256)))
            used |= self._extra_blob_references(s)
            unused_rows = [b for b in s.scalars(select(Blob)) if b.sha256 not in used]
            freed = sum(b.size for b in unused_rows)
            for row in unused_rows:
                s.delete(row)
        removed = 0
        for sha in list(self.blobs.all_digests()):
            if sha not in used:
                self.blobs.remove(sha)
                removed += 1
        return {"blobs_removed": removed, "bytes_freed": freed,
                "temp_files_removed": self.blobs.clean_tmp() + self._clean_work_folders()}

    def _clean_work_folders(self, older_than_s: float = STALE_WORK_FOLDER_S) -> int:
        """Remove `loragen-*` work folders (generate, train, selection) that a killed process left behind.

        Only folders untouched for `older_than_s`, so a command still running beside gc keeps its own.
        """
        cutoff = time.time() - older_than_s
        removed = 0
        for folder in self.home.glob("loragen-*"):
            if folder.is_dir() and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed

    def adapter_folder(self, ref: str) -> Path:
        """A PEFT folder of links to the adapter's blobs, for loading it without a copy."""
        weights, config, view = self.adapter_files(ref)
        folder = self.home / "snapshots" / "adapters" / view["uid"]
        self._link_files(folder, {adapter_io.WEIGHTS_NAME: weights, adapter_io.CONFIG_NAME: config})
        return folder

    # ---------------------------------------------------------------- evaluations

    def record_scores(self, base_ref: str, adapter_ref: str | None, scores: Iterable[Any],
                      details: dict[str, Any]) -> None:
        """Keep lm-eval results: a base version zero-shot (no adapter) or an adapter on it."""
        with self.session() as s:
            version = self.resolve_version(s, base_ref)
            adapter_id = self._find_adapter(s, adapter_ref).id if adapter_ref else None
            for score in scores:
                s.add(EvalResult(adapter_id=adapter_id, base_version_id=version.id, task_name=score.task,
                                 metric=score.metric, value=score.value, num_examples=score.num_examples,
                                 split=score.split, details=dict(details, stderr=score.stderr)))

    def comparison(self, split: str = "test") -> list[dict[str, Any]]:
        """Per task and base version: zero-shot and each origin's adapters, from the latest stored results."""
        with self.session() as s:
            rows = s.execute(
                select(EvalResult, Adapter.origin, Adapter.uid, Adapter.task_id)
                .outerjoin(Adapter, EvalResult.adapter_id == Adapter.id)
                .where(EvalResult.split == split)
                .order_by(EvalResult.created_at, EvalResult.id)).all()
            labels = {v.id: v.label for v in s.scalars(select(BaseVersion).options(selectinload(BaseVersion.base)))}
        latest: dict[tuple, tuple[EvalResult, str]] = {}
        for result, origin, uid, _ in rows:
            kind = origin.value if origin is not None else "zero_shot"
            latest[(result.task_name, result.base_version_id, result.metric, uid or "", kind)] = (result, kind)
        table: dict[tuple, dict[str, Any]] = {}
        for (task, version_id, metric, _, kind), (result, _) in latest.items():
            row = table.setdefault((task, version_id, metric), {
                "task": task, "base": labels.get(version_id, str(version_id)), "metric": metric})
            row.setdefault(kind, []).append(result.value)
        summary = []
        for row in table.values():
            for kind in ("zero_shot", "trained", "ingested", "generated"):
                values = row.pop(kind, [])
                row[kind] = ({"mean": sum(values) / len(values), "best": max(values), "n": len(values)}
                             if values else None)
            summary.append(row)
        return sorted(summary, key=lambda r: (r["task"], r["base"]))

    def _extra_blob_references(self, s: Session) -> set[str]:
        """Blobs referenced by generator checkpoints."""
        rows = s.execute(select(GeneratorCheckpointRow.weights_sha256, GeneratorCheckpointRow.meta_sha256)).all()
        return {sha for row in rows for sha in row}

    # ---------------------------------------------------------------- generator support

    def base_embedding(self, label: str) -> list[float] | None:
        with self.session() as s:
            return self.resolve_version(s, label).embedding

    def set_base_embedding(self, label: str, embedding: list[float]) -> None:
        with self.session() as s:
            self.resolve_version(s, label).embedding = list(embedding)

    def adapters_for_training(self, tasks: Iterable[str] | None = None, bases: Iterable[str] | None = None,
                              origins: Iterable[str] = ("trained", "ingested")) -> list[dict[str, Any]]:
        """Views (with blob paths) of the adapters a generator may learn from."""
        with self.session() as s:
            query = select(Adapter).options(selectinload(Adapter.task),
                                            selectinload(Adapter.base_version).selectinload(BaseVersion.base))
            query = query.where(Adapter.origin.in_([Origin(o) for o in origins]))
            if bases:
                ids = [self.resolve_version(s, ref).id for ref in bases]
                query = query.where(Adapter.base_version_id.in_(ids))
            if tasks:
                query = query.join(Task).where(Task.name.in_(list(tasks)))
            rows = s.scalars(query.order_by(Adapter.id)).all()
            return [dict(_adapter_view(a), weights_path=self.blob_path(a.weights_sha256)) for a in rows]

    def register_generator(self, folder: Path, *, step: int, seed: int, tasks: list[str], bases: list[str],
                           held_out: list[str], num_adapters: int, final_loss: float) -> Registered:
        from loragen.generator.training import META_FILE, WEIGHTS_FILE

        with self.session() as s:
            weights_sha = self._store_file(s, folder / WEIGHTS_FILE, "application/vnd.safetensors")
            meta_sha = self._store_file(s, folder / META_FILE, "application/json")
            existing = s.scalar(select(GeneratorCheckpointRow).where(GeneratorCheckpointRow.uid == weights_sha))
            if existing is not None:
                return Registered(id=weights_sha[:12], created=False)
            s.add(GeneratorCheckpointRow(uid=weights_sha, weights_sha256=weights_sha, meta_sha256=meta_sha, step=step,
                                         seed=seed, tasks=sorted(tasks), bases=sorted(bases), held_out=sorted(held_out),
                                         num_adapters=num_adapters, final_loss=final_loss))
            return Registered(id=weights_sha[:12], created=True)

    def generator_folder(self, ref: str | None = None) -> tuple[Path, str]:
        """(folder of links to a generator's files, its full uid); the newest when ref is None."""
        from loragen.generator.training import META_FILE, WEIGHTS_FILE

        with self.session() as s:
            query = select(GeneratorCheckpointRow)
            if ref:
                query = query.where(GeneratorCheckpointRow.uid.startswith(ref.strip().lower()))
            rows = s.scalars(query.order_by(GeneratorCheckpointRow.id.desc()).limit(2)).all()
            if not rows:
                raise NotFound(f"no generator checkpoint {ref}" if ref else
                               "no generator has been trained yet: run `loragen train`")
            if ref and len(rows) > 1:
                raise NotFound(f"generator id {ref} is ambiguous: give more characters")
            row = rows[0]
            weights, meta = self.blob_path(row.weights_sha256), self.blob_path(row.meta_sha256)
        folder = self.home / "snapshots" / "generators" / row.uid
        self._link_files(folder, {WEIGHTS_FILE: weights, META_FILE: meta})
        return folder, row.uid

    def list_generators(self) -> list[dict[str, Any]]:
        with self.session() as s:
            rows = s.scalars(select(GeneratorCheckpointRow).order_by(GeneratorCheckpointRow.id)).all()
            return [{"id": r.uid[:12], "uid": r.uid, "step": r.step, "seed": r.seed, "tasks": r.tasks, "bases": r.bases,
                     "held_out": r.held_out, "adapters": r.num_adapters, "final_loss": r.final_loss,
                     "created_at": r.created_at.isoformat()} for r in rows]

    def _link_files(self, folder: Path, files: dict[str, Path]) -> None:
        """Point folder/<name> at each stored blob, atomically per link (like the HF cache's snapshots)."""
        for name, target in files.items():
            link = folder / name
            if link.is_symlink() and Path(os.readlink(link)) == target:
                continue
            link.parent.mkdir(parents=True, exist_ok=True)
            tmp_link = link.with_name(f".{link.name}.{os.getpid()}.tmp")
            tmp_link.unlink(missing_ok=True)
            tmp_link.symlink_to(target)
            os.replace(tmp_link, link)


def _check_same_architecture(latest: BaseVersion, architecture: Architecture) -> None:
    label = latest.label
    if architecture.model_type != latest.base.architecture:
        raise LoragenError(f"architecture differs from {label}: {architecture.model_type} vs {latest.base.architecture}; "
                           "register it as a new base with `loragen base add`")
    old, new = latest.linear_shapes, architecture.linear_shapes
    for module in sorted(set(old) | set(new)):
        if old.get(module) != new.get(module):
            raise LoragenError(f"architecture differs from {label} at {module}: {old.get(module)} vs {new.get(module)}; "
                               "register it as a new base with `loragen base add`")


def _media_type(relpath: str) -> str:
    if relpath.endswith(".gguf"):
        return "application/vnd.gguf"
    if relpath.endswith(".safetensors"):
        return "application/vnd.safetensors"
    if relpath.endswith(".json"):
        return "application/json"
    return "application/octet-stream"


def _adapter_view(adapter: Adapter) -> dict[str, Any]:
    """The view of an ORM adapter (task and base version loaded): the same dict as `show` prints."""
    return adapter_view(adapter.uid, adapter.task.name, adapter.base_version.base.name, adapter.base_version.version,
                        adapter.origin.value, adapter.rank, adapter.alpha, adapter.target_modules,
                        adapter.num_parameters, adapter.weights_sha256, adapter.provenance, adapter.created_at)
