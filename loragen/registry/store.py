"""The registry's operations: what the CLI commands do, as library calls.

Every write follows one order: check everything, copy the files into the blob
store (idempotent, content-addressed; outside any transaction, so a big base holds
no lock while it is copied), then register the metadata in a single transaction
that first takes the store's lock and makes sure the copied files are still there.
A crash before the commit leaves at most an unreferenced blob, which `gc` removes;
it never leaves a half-registered adapter. gc decides and deletes under the same
lock, taken exclusive, so no registered row ever points at a file gc removed.

The Registry is the one entry point; some of its work lives beside it: upkeep (gc, doctor),
export, snapshots (link folders, and the checks that keep database paths inside them),
refs (names and references), views (the read side, in plain SQL).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from loragen import adapters as adapter_io
from loragen.bases import Architecture, BaseSource, read_architecture, resolve_source, weights_digest
from loragen.config import RegistryConfig
from loragen.errors import LoragenError, NotFound, quoted
from loragen.inputs import check_text
from loragen.registry import db, library, upkeep
from loragen.registry.blobs import BlobStore, media_type
from loragen.registry.export import EXPORT_RECORD, check_export_target, write_export  # noqa: F401  (the store's API)
from loragen.registry.models import (
    Adapter,
    BaseModel,
    BaseVersion,
    BaseVersionFile,
    Blob,
    EvalResult,
    GeneratorCheckpointRow,
    GeneratorLibraryEntry,
    Origin,
    TaskDescription,
    TaskRow,
)
from loragen.registry.readonly import converted_root, read_only_file, snapshots_root
from loragen.registry.records import BaseVersionInfo, Registered, Removed, StagedBlob
from loragen.registry.refs import (  # noqa: F401  (check_name, parse_base_ref, MIN_ID_PREFIX: the store's API)
    MAX_NAME_LENGTH,
    MIN_ID_PREFIX,
    NAME_PATTERN,
    adapter_view,
    check_name,
    id_prefix_range,
    no_such_base,
    no_such_version,
    one_adapter,
    parse_base_ref,
)
from loragen.registry.snapshots import link_files, stored_digest, stored_relative_path
from loragen.registry.views import EngineReader, Views, sqlite_file


class Registry:
    def __init__(self, config: RegistryConfig):
        self.config = config
        self.home = config.home_path
        if self.home.exists() and not self.home.is_dir():
            raise LoragenError(f"the registry home {self.home} (LORAGEN_HOME, --home or registry.home) is a file, "
                               "not a folder")
        try:
            self.home.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise LoragenError(f"cannot create the registry home {self.home}: {err.strerror or err}") from None
        self.blobs = BlobStore(self.home / "blobs")
        # A home this process may only read serves the read commands: the file opened read-only, no upgrade.
        database = sqlite_file(config.database_url)
        read_only = database is not None and read_only_file(database)
        self.engine = db.make_engine(config.database_url, read_only_file=database if read_only else None)
        db.ensure_schema(self.engine, self.home / "registry.lock", read_only=read_only)
        self.snapshots = snapshots_root(self.home)
        # The read side (list, show): plain SQL over the same engine, one definition per view.
        self.views = Views(EngineReader(self.engine))

    def session(self):
        return db.transaction(self.engine)

    # ---------------------------------------------------------------- blobs

    def _stage_file(self, path: Path, media_type: str) -> StagedBlob:
        """Copy a file into the blob store; call it before the transaction that records it (no lock is held)."""
        sha, size = self.blobs.put_file(path)
        return StagedBlob(source=Path(path), sha256=sha, size=size, media_type=media_type)

    def _record_blob(self, session: Session, staged: StagedBlob) -> str:
        """Make a staged file a blob that rows of this transaction may reference; return its sha256.

        The only way a sha256 reaches a row. Under the store's lock gc cannot run until this
        transaction ends, so a file present now stays; one gc removed since it was staged (it
        was unreferenced then) is stored again from its source.
        """
        db.lock_store(session, exclusive=False)
        if not self.blobs.holds(staged.sha256, staged.size):
            sha, _ = self.blobs.put_file(staged.source)
            if sha != staged.sha256:
                raise LoragenError(f"{staged.source} changed while it was being registered: try again")
        if session.get(Blob, staged.sha256) is None:
            try:
                with session.begin_nested():  # a savepoint: losing a race must not abort the transaction
                    session.add(Blob(sha256=staged.sha256, size=staged.size, media_type=staged.media_type))
            except IntegrityError:
                pass  # another process recorded the same bytes meanwhile (PostgreSQL; SQLite serialises writers)
        return staged.sha256

    def blob_path(self, sha: str) -> Path:
        path = self.blobs.path(stored_digest(sha, "a blob"))
        if not path.is_file():
            raise LoragenError(f"blob {sha[:12]} is missing from {self.blobs.root}: the store is damaged")
        return path

    # ---------------------------------------------------------------- bases

    def version(self, ref: str) -> BaseVersionInfo:
        """The base version a reference names (NAME is its newest version), as plain data."""
        with self.session() as s:
            row = self.resolve_version(s, ref)
            return BaseVersionInfo(
                id=row.id, name=row.base.name, version=row.version, architecture=row.base.architecture,
                gguf_file=row.gguf_file and stored_relative_path(row.gguf_file, f"the GGUF file of {row.label}"),
                weights_digest=stored_digest(row.weights_digest, f"the weights digest of {row.label}"),
                linear_shapes=dict(row.linear_shapes),
                config=dict(row.config), num_parameters=row.num_parameters)

    def resolve_version(self, session: Session, ref: str) -> BaseVersion:
        """The ORM row of a base reference, inside this store's own session (outside the registry: `version`)."""
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

    def add_base(self, name: str, source_spec: str, note: str = "",
                 reading: Callable[[str], None] | None = None) -> Registered:
        """Register a new base model: its version 1.

        The name is checked before the source is touched; `reading` is told the source before its weights are read.
        """
        check_name("base", name)
        check_text("note", note)  # stored, then printed by `list bases`: refused before the weights are read
        with self.session() as s:
            if s.scalar(select(BaseModel).where(BaseModel.name == name)) is not None:
                raise LoragenError(f"base '{name}' already exists: "
                                   f"use `loragen base update {name} --from PATH` for a new version")
        source = self._resolve_source(source_spec)
        if reading:
            reading(source.description)
        architecture = read_architecture(source)
        digest = weights_digest(source)
        staged = self._stage_base_files(source)
        with self.session() as s:
            base = BaseModel(name=name, architecture=architecture.model_type)
            s.add(base)
            try:
                s.flush()
            except IntegrityError:
                raise LoragenError(f"base '{name}' already exists") from None
            version = self._add_version(s, base, 1, None, source, architecture, digest, staged,
                                        note or "initial version", licence=source.licence)
            return Registered(id=f"{name}@v{version.version}", created=True)

    def update_base(self, name: str, source_spec: str, note: str = "",
                    reading: Callable[[str], None] | None = None, parent: str | None = None) -> Registered:
        """Register an evolved version: same architecture, new weights. It is numbered after the newest version;
        its parent (lineage) is the newest, or `parent` (NAME@vN of the same base) for weights evolved from an
        earlier release.

        The base is found before the source is touched; `reading` is told the source before its weights are read.
        """
        if "@" in name:  # a new version always follows the newest, so a version here would only mislead
            raise LoragenError(f"base update takes a base name ({quoted(name.split('@')[0])}), not a version "
                               f"({quoted(name)}): the new version always follows the newest (--parent names "
                               "the version it evolved from)")
        check_text("note", note)
        with self.session() as s:
            latest = self.resolve_version(s, name)
            parent_id = latest.id
            if parent is not None:
                if parent.split("@")[0] != name or "@" not in parent:
                    raise LoragenError(f"the parent must be a version of {quoted(name)}, as {name}@vN "
                                       f"(got {quoted(parent)})")
                parent_id = self.resolve_version(s, parent).id
        source = self._resolve_source(source_spec)
        if reading:
            reading(source.description)
        architecture = read_architecture(source)
        _check_same_architecture(latest, architecture)
        digest = weights_digest(source)
        staged = self._stage_base_files(source)
        with self.session() as s:
            same = s.scalar(select(BaseVersion).where(BaseVersion.base_id == latest.base_id,
                                                      BaseVersion.weights_digest == digest))
            if same is not None:
                raise LoragenError(f"these weights are already registered as {name}@v{same.version}")
            base = s.get(BaseModel, latest.base_id)
            newest = s.scalar(select(func.max(BaseVersion.version)).where(BaseVersion.base_id == base.id))
            licence = source.licence or s.get(BaseVersion, parent_id).licence  # an evolved version keeps its terms
            version = self._add_version(s, base, newest + 1, parent_id, source, architecture, digest, staged, note,
                                        licence=licence)
            return Registered(id=f"{name}@v{version.version}", created=True)

    def _resolve_source(self, spec: str) -> BaseSource:
        """`--from`, resolved; an assembled bundled model (bundled:gemma3) is joined into this registry's blob store
        (once: a later call finds it there) and linked under snapshots/bundled/NAME."""
        folder = self.snapshots / "bundled" / spec.split(":", 1)[-1] if spec.startswith("bundled:") else None
        return resolve_source(spec, assembled_into=(self.blobs, folder))

    def _stage_base_files(self, source: BaseSource) -> dict[str, StagedBlob]:
        return {relpath: self._stage_file(source.folder / relpath, media_type(relpath)) for relpath in source.files}

    def _add_version(self, s: Session, base: BaseModel, number: int, parent_id: int | None, source: BaseSource,
                     architecture: Architecture, digest: str, staged: dict[str, StagedBlob], note: str,
                     licence: str | None = None) -> BaseVersion:
        version = BaseVersion(
            base_id=base.id, version=number, parent_id=parent_id, note=note, source=source.description, licence=licence,
            gguf_file=source.gguf_file, config=architecture.config, linear_shapes=architecture.linear_shapes,
            weights_digest=digest, num_parameters=architecture.num_parameters)
        s.add(version)
        s.flush()
        for relpath, file in staged.items():
            s.add(BaseVersionFile(version_id=version.id, path=relpath, blob_sha256=self._record_blob(s, file)))
        s.flush()
        return version

    def base_folder(self, version: BaseVersionInfo) -> Path:
        """A folder of links to the version's blobs that transformers can load (like the HF cache's snapshots).

        For a GGUF version, transformers needs `gguf_file=version.gguf_file` as well.
        """
        folder = self.snapshots / version.weights_digest[:16]
        with self.session() as s:
            files = s.scalars(select(BaseVersionFile).where(BaseVersionFile.version_id == version.id)).all()
        link_files(folder, {stored_relative_path(entry.path, f"a file of {version.label}"): self.blob_path(entry.blob_sha256)
                            for entry in files})
        return folder

    def converted_folder(self, version: BaseVersionInfo) -> Path:
        """Where a GGUF version is kept dequantized, as a Hugging Face folder written by the base loader: a cache
        beside the snapshots, safe to delete, made again on the next load."""
        return converted_root(self.home) / version.weights_digest[:16]

    def list_bases(self) -> list[dict[str, Any]]:
        return self.views.bases()

    # ---------------------------------------------------------------- tasks

    def ensure_task(self, s: Session, name: str, descriptions: Iterable[str] = ()) -> TaskRow:
        check_name("task", name)
        task = s.scalar(select(TaskRow).where(TaskRow.name == name))
        if task is None:
            try:
                with s.begin_nested():
                    task = TaskRow(name=name)
                    s.add(task)
            except IntegrityError:  # another process created it meanwhile (PostgreSQL)
                task = s.scalar(select(TaskRow).where(TaskRow.name == name))
        known = set(s.scalars(select(TaskDescription.text).where(TaskDescription.task_id == task.id)))
        for text in descriptions:
            text = " ".join(text.split())
            if text and text not in known:
                s.add(TaskDescription(task_id=task.id, text=text))
                known.add(text)
        s.flush()
        return task

    def list_registered_tasks(self) -> list[dict[str, Any]]:
        """The registry's task names with their descriptions and adapter counts (the bundled suite: tasks.list_tasks)."""
        return self.views.tasks()

    def task_descriptions(self, name: str) -> list[str]:
        found = self.views.tasks(name=name)
        if not found:
            raise NotFound(f"no task named {quoted(name)}")
        return found[0]["descriptions"]

    # ---------------------------------------------------------------- adapters

    def ingest(self, path: Path, base_ref: str, task: str, descriptions: Iterable[str] = (),
               origin: Origin = Origin.ingested, provenance: dict[str, Any] | None = None,
               replaces: str | None = None) -> Registered:
        """Validate a PEFT folder against a base version, then register it."""
        path = Path(path)
        check_name("task", task)
        descriptions = list(descriptions)
        for text in descriptions:  # stored, then printed by `list tasks`: refused before any file is read
            check_text("description", text)
        with self.session() as s:
            version = self.resolve_version(s, base_ref)
        folder = adapter_io.read_adapter_folder(path)
        adapter_io.check_against_base(folder, version.linear_shapes, version.label)
        adapter_io.load_weights(folder.weights_path)  # refuses NaN/Inf, proves the bytes load
        provenance = dict(provenance or {})
        if origin is Origin.ingested:
            provenance.setdefault("source", str(path.resolve()))
        weights = self._stage_file(folder.weights_path, "application/vnd.safetensors")
        config = self._stage_file(folder.config_path, "application/json")
        with self.session() as s:
            weights_sha, config_sha = self._record_blob(s, weights), self._record_blob(s, config)
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
            except IntegrityError as err:  # the same adapter, registered by another process meanwhile?
                if s.scalar(select(Adapter.id).where(Adapter.uid == uid)) is None:  # no: the row itself was refused
                    raise LoragenError(f"the registry refused adapter {uid[:12]}: "
                                       f"{str(err.orig).splitlines()[0]}") from None
                return Registered(id=uid[:12], created=False)
            return Registered(id=uid[:12], created=True)

    def _find_adapter(self, s: Session, ref: str, lock: Literal["share", "update"] | None = None) -> Adapter:
        """The adapter an id prefix names. `lock` holds its row until the transaction ends (PostgreSQL; SQLite's
        writers are serialised already): "share" while a generator's library is recorded over it, "update" while
        `rm` checks that no library uses it, so neither can slip between the other's check and its write."""
        low, high = id_prefix_range(ref)  # a range on the uid's unique index, not a LIKE scan
        in_range = (Adapter.uid >= low, Adapter.uid < high) if high else (Adapter.uid >= low,)
        query = select(Adapter).where(*in_range).options(
            selectinload(Adapter.task), selectinload(Adapter.base_version).selectinload(BaseVersion.base)).limit(2)
        if lock is not None:
            query = query.with_for_update(read=lock == "share")
        return one_adapter(s.scalars(query).all(), low)

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
        """Write a PEFT folder that loads base and adapter in one offline call:
        `peft.AutoPeftModelForCausalLM.from_pretrained(out_dir)` (plus `gguf_file=` for a GGUF base).

        The weights are byte-identical to the stored ones. adapter_config.json is the stored one with
        `base_model_name_or_path` pointing at this registry's snapshot folder of the adapter's base version
        (a path valid on this machine, so it is written at export, never stored). EXPORT_RECORD beside it names
        the base as NAME@vN: peft warns about keys its config does not know, so the label stays out of the config.
        """
        weights, config, view = self.adapter_files(ref)
        check_export_target(out_dir)
        version = self.version(view["base"])
        base_folder = self.base_folder(version)
        record = {"id": view["id"], "uid": view["uid"], "task": view["task"], "origin": view["origin"],
                  "base": version.label, "base_folder": str(base_folder), "base_gguf_file": version.gguf_file,
                  "weights_sha256": view["weights_sha256"]}
        return write_export(out_dir, weights, config, record, base_folder)

    def remove(self, ref: str, *, force: bool = False) -> Removed:
        """Unregister an adapter (its blobs stay until `gc`); see remove_all."""
        return self.remove_all([ref], force=force)[0]

    def remove_all(self, refs: Sequence[str], *, force: bool = False) -> list[Removed]:
        """Unregister adapters, all or none (the same adapter named twice is removed once).

        An adapter in a generator's library is refused, since that generator cannot generate without it;
        `force` removes it anyway and each Removed names the generators it breaks. Their library entries stay,
        so they fail in one line naming the adapter (and registering it again mends them). Once removed,
        nothing keeps its blobs: gc frees them like any other removed adapter's.
        """
        with self.session() as s:
            adapters = list({a.uid: a for a in (self._find_adapter(s, ref, lock="update") for ref in refs)}.values())
            users = self._library_users(s, [a.uid for a in adapters])
            blocked = [a for a in adapters if users.get(a.uid)]
            if blocked and not force:
                first = blocked[0]
                more = f" ({len(blocked) - 1} more of these adapters are in libraries too)" if len(blocked) > 1 else ""
                raise LoragenError(
                    f"adapter {first.uid[:12]} ({first.task.name}) is in the library of generator(s) "
                    f"{', '.join(users[first.uid])}, which cannot generate without it{more}: "
                    f"`loragen rm {first.uid[:12]} --force` removes it anyway and breaks them")
            removed = []
            for adapter in adapters:
                for child in s.scalars(select(Adapter).where(Adapter.replaces_id == adapter.id)):
                    child.replaces_id = None
                removed.append(Removed(id=adapter.uid[:12], broken_generators=users.get(adapter.uid, [])))
                s.delete(adapter)
            return removed

    def _library_users(self, s: Session, uids: Sequence[str]) -> dict[str, list[str]]:
        """adapter uid -> the ids of the generators whose library holds it (only adapters some library holds)."""
        users: dict[str, list[str]] = {}
        for start in range(0, len(uids), 500):  # bounded IN lists
            for uid, generator in s.execute(
                    select(GeneratorLibraryEntry.adapter_uid, GeneratorCheckpointRow.uid)
                    .join(GeneratorCheckpointRow, GeneratorLibraryEntry.generator_id == GeneratorCheckpointRow.id)
                    .where(GeneratorLibraryEntry.adapter_uid.in_(uids[start:start + 500]))
                    .order_by(GeneratorCheckpointRow.id)):
                users.setdefault(uid, []).append(generator[:12])
        return users

    def gc(self, grace_seconds: float | None = None) -> dict[str, int]:
        """Delete blobs nothing references, and leftovers of interrupted writes (see upkeep.gc)."""
        grace = self.config.gc_grace_seconds if grace_seconds is None else grace_seconds
        return upkeep.gc(self.engine, self.blobs, self.home, grace)

    def verify_store(self, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Re-hash every blob a row references; report what is missing, damaged or stored unsafely, and every
        generator whose library lost an adapter or its exact weights (`doctor`)."""
        return upkeep.verify_store(self.engine, self.blobs, progress)

    def adapter_folder(self, ref: str) -> Path:
        """A PEFT folder of links to the adapter's blobs, for loading it without a copy."""
        weights, config, view = self.adapter_files(ref)
        folder = self.snapshots / "adapters" / stored_digest(view["uid"], "an adapter's uid")
        link_files(folder, {adapter_io.WEIGHTS_NAME: weights, adapter_io.CONFIG_NAME: config})
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

    def eval_results(self, split: str = "test") -> list[dict[str, Any]]:
        """Every stored score on a split, oldest first, with what was scored: an adapter (its origin and task) or,
        with adapter None, the base version zero-shot. Reports over them: loragen.evaluation.comparison."""
        with self.session() as s:
            rows = s.execute(
                select(EvalResult, Adapter.origin, Adapter.uid, TaskRow.name)
                .outerjoin(Adapter, EvalResult.adapter_id == Adapter.id)
                .outerjoin(TaskRow, Adapter.task_id == TaskRow.id)
                .where(EvalResult.split == split)
                .order_by(EvalResult.created_at, EvalResult.id)).all()
            labels = {v.id: v.label for v in s.scalars(select(BaseVersion).options(selectinload(BaseVersion.base)))}
            return [{"task": result.task_name, "base": labels.get(result.base_version_id, str(result.base_version_id)),
                     "metric": result.metric, "value": result.value, "examples": result.num_examples,
                     "split": result.split, "adapter": uid, "adapter_task": adapter_task,
                     "origin": origin.value if origin is not None else None}
                    for result, origin, uid, adapter_task in rows]

    # ---------------------------------------------------------------- generator support

    def cached_base_embedding(self, label: str, format_version: int) -> list[float] | None:
        """The base-model condition kept for `label`, if it was computed in embedding format `format_version`."""
        with self.session() as s:
            stored = self.resolve_version(s, label).embedding
        # None: never computed. A bare list (the first release wrote those) or another format: stale.
        if isinstance(stored, dict) and stored.get("format") == format_version:
            return stored["values"]
        return None

    def store_base_embedding(self, label: str, values: list[float], format_version: int) -> None:
        with self.session() as s:
            self.resolve_version(s, label).embedding = {"format": format_version, "values": list(values)}

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
                query = query.join(TaskRow).where(TaskRow.name.in_(list(tasks)))
            rows = s.scalars(query.order_by(Adapter.id)).all()
            return [dict(_adapter_view(a), weights_path=self.blob_path(a.weights_sha256)) for a in rows]

    def register_generator(self, weights: Path, meta: Path, *, step: int, seed: int, tasks: list[str],
                           bases: list[str], held_out: list[str], num_adapters: int, final_loss: float,
                           library: Sequence[str] = ()) -> Registered:
        """Store a generator checkpoint's two files (safetensors weights, JSON metadata) and register it.

        `library`: the adapters (ids or unique id prefixes) whose blend the generator emits, in the order of its
        coefficients. Each must be registered; the generator keeps each one's uid, task, base and weights digest
        (see loragen.registry.library), and `rm` refuses them while it is registered.
        """
        refs = list(library)
        with self.session() as s:  # a library naming no registered adapter is refused before any file is copied
            self._library_adapters(s, refs)
        weights = self._stage_file(Path(weights), "application/vnd.safetensors")
        meta = self._stage_file(Path(meta), "application/json")
        with self.session() as s:
            weights_sha, meta_sha = self._record_blob(s, weights), self._record_blob(s, meta)
            adapters = self._library_adapters(s, refs, lock="share")  # again: one may have been removed since
            existing = s.scalar(select(GeneratorCheckpointRow).where(GeneratorCheckpointRow.uid == weights_sha)
                                .options(selectinload(GeneratorCheckpointRow.library)))
            if existing is not None:
                if [entry.adapter_uid for entry in existing.library] != [a.uid for a in adapters]:
                    raise LoragenError(f"generator {weights_sha[:12]} is already registered with another library "
                                       f"({len(existing.library)} adapter(s)): its weights cannot serve two")
                return Registered(id=weights_sha[:12], created=False)
            s.add(GeneratorCheckpointRow(
                uid=weights_sha, weights_sha256=weights_sha, meta_sha256=meta_sha, step=step, seed=seed,
                tasks=sorted(tasks), bases=sorted(bases), held_out=sorted(held_out), num_adapters=num_adapters,
                final_loss=final_loss,
                library=[GeneratorLibraryEntry(position=position, adapter_uid=a.uid, task=a.task.name,
                                               base=a.base_version.label, weights_sha256=a.weights_sha256)
                         for position, a in enumerate(adapters)]))
            return Registered(id=weights_sha[:12], created=True)

    def _library_adapters(self, s: Session, refs: Sequence[str],
                          lock: Literal["share"] | None = None) -> list[Adapter]:
        """The adapters a library names, in its order; one line for a ref that names none, or an adapter named twice."""
        adapters: list[Adapter] = []
        positions: dict[str, int] = {}
        for position, ref in enumerate(refs):
            try:
                adapter = self._find_adapter(s, ref, lock=lock)
            except NotFound as err:
                raise NotFound(f"cannot register the generator: its library's adapter #{position}: {err}") from None
            if adapter.uid in positions:
                raise LoragenError(f"cannot register the generator: its library names adapter {adapter.uid[:12]} "
                                   f"twice (#{positions[adapter.uid]} and #{position})")
            positions[adapter.uid] = position
            adapters.append(adapter)
        return adapters

    def _find_generator(self, s: Session, ref: str | None) -> GeneratorCheckpointRow:
        """The generator an id prefix names; the newest when ref is None."""
        query = select(GeneratorCheckpointRow)
        if ref:
            query = query.where(GeneratorCheckpointRow.uid.startswith(ref.strip().lower(), autoescape=True))
        rows = s.scalars(query.order_by(GeneratorCheckpointRow.id.desc()).limit(2)).all()
        if not rows:
            raise NotFound(f"no generator checkpoint {quoted(ref)}" if ref else
                           "no generator has been trained yet: run `loragen train`")
        if ref and len(rows) > 1:
            raise NotFound(f"generator id {quoted(ref)} is ambiguous: give more characters")
        return rows[0]

    def generator_folder(self, ref: str | None = None, *, weights_name: str, meta_name: str) -> tuple[Path, str]:
        """(folder of links to a generator's files, its full uid); the newest when ref is None.

        The caller names the two files as its checkpoint format expects them (the store does not know it).
        """
        with self.session() as s:
            row = self._find_generator(s, ref)
            weights, meta = self.blob_path(row.weights_sha256), self.blob_path(row.meta_sha256)
        folder = self.snapshots / "generators" / stored_digest(row.uid, "a generator's uid")
        link_files(folder, {weights_name: weights, meta_name: meta})
        return folder, row.uid

    def generator_library(self, generator_ref: str | None) -> list[dict[str, Any]]:
        """The adapters a generator blends, in the order of its coefficients (empty for a raw-weights generator):
        {uid, id, task, base, weights_sha256, weights_path}.

        Each weights file is re-hashed here, so a generator never blends weights other than those it was trained
        on: an adapter removed (`rm --force`), a file missing or changed is refused in one line that names the
        generator, the adapter and what to do (see loragen.registry.library).
        """
        with self.session() as s:
            links = library.links(s, self._find_generator(s, generator_ref).id)
        broken = [(link, found) for link in links if (found := library.problem(link, self.blobs.verify))]
        if broken:
            link, found = broken[0]
            more = (f" ({len(broken) - 1} more of its library adapters are broken: `loragen doctor` lists them)"
                    if len(broken) > 1 else "")
            raise LoragenError(library.broken_message(link, found) + more)
        return [dict(link.view(), weights_path=self.blob_path(link.weights_sha256)) for link in links]

    def _generator_views(self, s: Session, rows: Sequence[GeneratorCheckpointRow]) -> list[dict[str, Any]]:
        entries: dict[str, list[dict[str, str]]] = {}
        for link in library.links(s, rows[0].id if len(rows) == 1 else None):
            entries.setdefault(link.generator_uid, []).append({"id": link.adapter_uid[:12], "task": link.task})
        return [{"id": r.uid[:12], "uid": r.uid, "step": r.step, "seed": r.seed, "tasks": r.tasks, "bases": r.bases,
                 "held_out": r.held_out, "adapters": r.num_adapters, "final_loss": r.final_loss,
                 "created_at": r.created_at.isoformat(), "library": entries.get(r.uid, [])} for r in rows]

    def list_generators(self) -> list[dict[str, Any]]:
        """Every generator, oldest first, each with its library's adapters (id and task, in order)."""
        with self.session() as s:
            rows = s.scalars(select(GeneratorCheckpointRow).order_by(GeneratorCheckpointRow.id)).all()
            return self._generator_views(s, rows) if rows else []

    def get_generator(self, ref: str) -> dict[str, Any]:
        """One generator by id prefix, as list_generators shows it."""
        with self.session() as s:
            return self._generator_views(s, [self._find_generator(s, ref)])[0]


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


def _adapter_view(adapter: Adapter) -> dict[str, Any]:
    """The view of an ORM adapter (task and base version loaded): the same dict as `show` prints."""
    return adapter_view(adapter.uid, adapter.task.name, adapter.base_version.base.name, adapter.base_version.version,
                        adapter.origin.value, adapter.rank, adapter.alpha, adapter.target_modules,
                        adapter.num_parameters, adapter.weights_sha256, adapter.provenance, adapter.created_at)
