"""What `list` and `show` print, read in plain SQL: the registry's read side.

The read commands have to answer at once with 100k adapters, start-up included. So each view
selects only the columns it prints, rows stream, every filter and order has an index
(migration 0003), and on a SQLite file the SQL runs on the standard library's sqlite3:
importing SQLAlchemy alone took about a third of a second on a 2-core machine. Other
databases run the same SQL through SQLAlchemy (`EngineReader`). Writes stay with the ORM in
loragen.registry.store, which reads through these views too, so a view has one definition.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Protocol

from loragen.architectures import layer_facts
from loragen.errors import LoragenError, quoted
from loragen.registry.readonly import read_only_file, read_only_uri
from loragen.registry.refs import (
    adapter_view,
    id_prefix_range,
    iso_column,
    json_column,
    no_such_base,
    no_such_version,
    one_adapter,
    parse_base_ref,
)
from loragen.registry.revisions import head_revision_fast

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from loragen.config import RegistryConfig

ORIGINS = ("trained", "ingested", "generated", "carried_over")  # loragen.registry.models.Origin's values
SQLITE_BUSY_TIMEOUT_S = 30.0


# ---------------------------------------------------------------- readers

class Reader(Protocol):
    def rows(self, sql: str, params: dict[str, Any]) -> Iterable[tuple]:
        """The result rows of one SELECT with :named parameters."""


class SqliteReader:
    """Reads a SQLite registry with the standard library: no SQLAlchemy import, rows streamed.

    A plain (deferred) read in WAL mode waits for no writer, so `list` answers beside a running ingest."""

    def __init__(self, connection: sqlite3.Connection):
        self.connection = connection

    @classmethod
    def at_head(cls, path: Path) -> SqliteReader | None:
        """A reader when the database's schema is this code's head; None when it needs the full path
        (no schema yet, an upgrade to run, not a database at all: SQLAlchemy and Alembic handle those)."""
        head = head_revision_fast()
        if head is None:
            return None
        try:
            if read_only_file(path):  # a home shared read-only: read without writing a journal file
                connection = sqlite3.connect(read_only_uri(path), timeout=SQLITE_BUSY_TIMEOUT_S, isolation_level=None,
                                             uri=True)
            else:
                connection = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error:
            return None
        try:
            connection.execute("PRAGMA query_only = ON")
            stamped = [row[0] for row in connection.execute("SELECT version_num FROM alembic_version")]
        except sqlite3.Error:
            stamped = []
        if stamped != [head]:
            connection.close()
            return None
        return cls(connection)

    def rows(self, sql: str, params: dict[str, Any]) -> Iterator[tuple]:
        try:
            yield from self.connection.execute(sql, params)
        except sqlite3.DatabaseError as err:  # damaged pages, found only when a query reads them
            raise LoragenError(f"cannot read the registry database: {err}") from None

    def close(self) -> None:
        self.connection.close()


class EngineReader:
    """The same SQL through a SQLAlchemy engine (PostgreSQL, or SQLite before its schema is at head)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def rows(self, sql: str, params: dict[str, Any]) -> list[tuple]:
        from sqlalchemy import text

        # Fetched whole: a half-read result would keep the connection (on SQLite, its write lock).
        with self.engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(sql), params)]

    def close(self) -> None:
        pass  # the engine belongs to the Registry


def sqlite_file(url: str) -> Path | None:
    """The file of a plain `sqlite:///path` URL; None for anything else (it goes through SQLAlchemy)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or any(c in url for c in "?%") or len(url) == len(prefix):
        return None
    return Path(url[len(prefix):])


def open_views(config: RegistryConfig, through_registry: Callable[[], Views]) -> Views:
    """Views on the registry `config` names: straight on its SQLite file when that is at the schema head,
    else `through_registry()`: the views of a Registry, which creates or upgrades the schema first."""
    path = sqlite_file(config.database_url)
    if path is not None and path.is_file():
        reader = SqliteReader.at_head(path)
        if reader is not None:
            return Views(reader)
    return through_registry()


# ---------------------------------------------------------------- views

_ADAPTER_COLUMNS = ("a.uid, t.name, bm.name, bv.version, a.origin, a.rank, a.alpha, a.target_modules, "
                    "a.num_parameters, a.weights_sha256, a.provenance, a.created_at")
_ADAPTER_JOINS = ("adapters a JOIN tasks t ON t.id = a.task_id JOIN base_versions bv ON bv.id = a.base_version_id "
                  "JOIN base_models bm ON bm.id = bv.base_id")


class Views:
    def __init__(self, reader: Reader):
        self.reader = reader

    def _rows(self, sql: str, **params: Any) -> Iterable[tuple]:
        return self.reader.rows(sql, params)

    def close(self) -> None:
        self.reader.close()

    # ------------------------------------------------------------ adapters

    def _adapter_filter(self, task: str | None, base: str | None, origin: str | None) -> tuple[str, dict[str, Any]]:
        clauses, params = [], {}
        if task:
            clauses.append("a.task_id = (SELECT id FROM tasks WHERE name = :task)")
            params["task"] = task
        if base:
            clauses.append("a.base_version_id = :version_id")
            params["version_id"] = self.version_id(base)
        if origin:
            if origin not in ORIGINS:
                raise LoragenError(f"unknown origin {quoted(origin)}: expected {', '.join(ORIGINS)}")
            clauses.append("a.origin = :origin")
            params["origin"] = origin
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def adapters(self, task: str | None = None, base: str | None = None, origin: str | None = None,
                 newest: int | None = None) -> Iterator[dict[str, Any]]:
        """Adapters oldest first (all of them, or the `newest` N), streamed."""
        where, params = self._adapter_filter(task, base, origin)
        if newest is None:
            rows = self._rows(f"SELECT {_ADAPTER_COLUMNS} FROM {_ADAPTER_JOINS}{where} ORDER BY a.created_at, a.id",
                              **params)
        else:
            rows = reversed(list(self._rows(f"SELECT {_ADAPTER_COLUMNS} FROM {_ADAPTER_JOINS}{where} "
                                            "ORDER BY a.created_at DESC, a.id DESC LIMIT :newest",
                                            newest=newest, **params)))
        for row in rows:
            yield adapter_view(*row)

    def adapter_ids(self, task: str | None = None, base: str | None = None,
                    origin: str | None = None) -> Iterator[str]:
        """The short ids `list -q` prints, in list order, streamed."""
        where, params = self._adapter_filter(task, base, origin)
        for uid, in self._rows(f"SELECT a.uid FROM adapters a{where} ORDER BY a.created_at, a.id", **params):
            yield uid[:12]

    def adapter_totals(self, task: str | None = None, base: str | None = None,
                       origin: str | None = None) -> tuple[int, int]:
        """(how many adapters, their parameters) a list with these filters holds."""
        where, params = self._adapter_filter(task, base, origin)
        [(count, parameters)] = list(self._rows(
            f"SELECT count(*), coalesce(sum(a.num_parameters), 0) FROM adapters a{where}", **params))
        return int(count), int(parameters)

    def adapter(self, ref: str) -> dict[str, Any]:
        """One adapter by id prefix, with its evaluations and what it replaces."""
        low, high = id_prefix_range(ref)
        below, bounds = (" AND a.uid < :high", {"low": low, "high": high}) if high else ("", {"low": low})
        matches = list(self._rows(f"SELECT a.id, a.replaces_id, {_ADAPTER_COLUMNS} FROM {_ADAPTER_JOINS} "
                                  f"WHERE a.uid >= :low{below} LIMIT 2", **bounds))
        adapter_id, replaces_id, *columns = one_adapter(matches, low)
        view = adapter_view(*columns)
        view["evaluations"] = [
            {"task": task, "metric": metric, "value": value, "examples": examples}
            for task, metric, value, examples in self._rows(
                "SELECT task_name, metric, value, num_examples FROM eval_results WHERE adapter_id = :id "
                "ORDER BY created_at, id", id=adapter_id)]
        if replaces_id:
            [(uid,)] = list(self._rows("SELECT uid FROM adapters WHERE id = :id", id=replaces_id))
            view["replaces"] = uid[:12]
        return view

    # ------------------------------------------------------------ bases and tasks

    def version_id(self, ref: str) -> int:
        """The id of the base version NAME[@vN] names (the newest without @vN)."""
        name, version = parse_base_ref(ref)
        found = list(self._rows(
            "SELECT bv.version, bv.id FROM base_versions bv JOIN base_models bm ON bm.id = bv.base_id "
            "WHERE bm.name = :name ORDER BY bv.version DESC", name=name))
        if not found:
            raise no_such_base(name, [known for known, in self._rows("SELECT name FROM base_models ORDER BY name")])
        if version is None:
            return found[0][1]
        for number, version_id in found:
            if number == version:
                return version_id
        raise no_such_version(name, version)

    def bases(self) -> list[dict[str, Any]]:
        """Every base version, with its lineage and how many adapters it has."""
        rows = self._rows(
            "SELECT bm.name, bv.version, bm.architecture, parent.version, bv.note, bv.num_parameters, bv.config, "
            "bv.weights_digest, bv.source, bv.licence, bv.created_at, "
            "(SELECT count(*) FROM adapters a WHERE a.base_version_id = bv.id) "
            "FROM base_versions bv JOIN base_models bm ON bm.id = bv.base_id "
            "LEFT JOIN base_versions parent ON parent.id = bv.parent_id ORDER BY bv.base_id, bv.version")
        views = []
        for name, version, architecture, parent, note, parameters, config, digest, source, licence, created, adapters \
                in rows:
            facts = layer_facts(architecture, json_column(config))
            views.append({
                "name": f"{name}@v{version}", "base": name, "version": version, "architecture": architecture,
                "parent": f"{name}@v{parent}" if parent else None, "note": note, "parameters": parameters,
                "layers": facts["layers"], "hidden_size": facts["hidden_size"], "head_dim": facts["head_dim"],
                "attention": facts["attention"], "tied_embeddings": facts["tied_embeddings"],
                "weights_digest": digest, "source": source, "licence": licence,
                "adapters": adapters, "created_at": iso_column(created)})
        return views

    def tasks(self, name: str | None = None) -> list[dict[str, Any]]:
        """Tasks by name (or the one named), with their descriptions and adapter counts."""
        where, params = (" WHERE t.name = :name", {"name": name}) if name is not None else ("", {})
        tasks = list(self._rows(f"SELECT t.id, t.name, (SELECT count(*) FROM adapters a WHERE a.task_id = t.id) "
                                f"FROM tasks t{where} ORDER BY t.name", **params))
        descriptions: dict[int, list[str]] = {task_id: [] for task_id, _, _ in tasks}
        join = f" JOIN tasks t ON t.id = d.task_id{where}" if name is not None else ""
        for task_id, text in self._rows(f"SELECT d.task_id, d.text FROM task_descriptions d{join} ORDER BY d.id",
                                        **params):
            descriptions[task_id].append(text)
        return [{"name": task, "descriptions": descriptions[task_id], "adapters": count}
                for task_id, task, count in tasks]
