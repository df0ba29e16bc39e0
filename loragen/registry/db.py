"""Engine, sessions and automatic schema upgrades for the registry database."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DatabaseError, IntegrityError
from sqlalchemy.orm import Session

from loragen.errors import LoragenError
from loragen.registry.readonly import read_only_uri
from loragen.registry.revisions import head_revision_fast, known_revisions, migrations_dir  # noqa: F401  (db.migrations_dir)

SQLITE_BUSY_TIMEOUT_MS = 30_000
# PostgreSQL advisory lock key of the blob store (advisory locks are per database, so per registry).
STORE_LOCK_KEY = 0x6C6F726167656E  # "loragen"


def make_engine(url: str, read_only_file: Path | None = None) -> Engine:
    """An engine on `url`; with `read_only_file` (the SQLite file of `url`), one that reads it without writing."""
    is_sqlite = url.startswith("sqlite")
    connect_args: dict = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000} if is_sqlite else {}
    if read_only_file is not None:
        url = f"sqlite:///{read_only_uri(read_only_file)}&uri=true"  # uri=true: SQLAlchemy hands the rest to sqlite3
    try:
        engine = create_engine(url, connect_args=connect_args)
    except Exception as err:  # noqa: BLE001 - bad URL, missing driver: whatever SQLAlchemy raises, one line
        raise LoragenError(f"cannot use database URL {url!r}: {err}") from None
    if is_sqlite:
        _configure_sqlite(engine, read_only=read_only_file is not None)
    return engine


def _configure_sqlite(engine: Engine, read_only: bool) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record):  # noqa: ANN001
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        if not read_only:  # setting the journal mode writes the file
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection):  # noqa: ANN001
        # IMMEDIATE takes the write lock up front: two writers queue on the busy
        # timeout instead of one failing when it upgrades a read lock. A read-only
        # file can take no write lock: its transactions only read.
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` with Alembic (idempotent)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    """The revision stamped in alembic_version (None: no schema yet), read without importing Alembic."""
    with engine.connect() as connection:
        if not engine.dialect.has_table(connection, "alembic_version"):
            return None
        stamped = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return stamped[0] if len(stamped) == 1 else None  # several: branches, for Alembic to sort out


def head_revision() -> str:
    """The migrations' head as Alembic's ScriptDirectory computes it (slow: the authority, not the fast path)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return ScriptDirectory.from_config(config).get_current_head()


def ensure_schema(engine: Engine, lock_path: Path, read_only: bool = False) -> None:
    """Create or upgrade the schema on first use, under a file lock so two processes don't race.

    The usual case, a schema already at head, costs one small query: no Alembic, no lock."""
    with database_errors("open"):
        current = current_revision(engine)
        if current == (head_revision_fast() or head_revision()):
            return
        check_known_revision(current)
        if read_only:
            raise LoragenError("the registry database is read-only and its schema is older than this loragen's: "
                               "run a command once with write access to upgrade it")
        from filelock import FileLock

        with FileLock(str(lock_path), timeout=120):
            if current_revision(engine) != head_revision():
                upgrade(engine)


def check_known_revision(current: str | None) -> None:
    """Refuse a schema this code has no migration for, before Alembic fails on it ("Can't locate revision")."""
    if current is not None and current not in known_revisions():
        raise LoragenError(f"this registry was written by a newer loragen (revision {current}); upgrade loragen")


@contextmanager
def database_errors(doing: str = "use") -> Iterator[None]:
    """A database that cannot be used (not a database, damaged pages, locked, read-only) as one line.

    IntegrityError passes through: the callers that expect it (a row another process added first) handle it."""
    try:
        yield
    except IntegrityError:
        raise
    except DatabaseError as err:
        reason = str(err.orig if err.orig is not None else err).splitlines()[0]
        if "readonly" in reason:  # a home shared read-only serves the read commands, not this one
            raise LoragenError(f"the registry database is read-only ({reason}): this command writes to it") from None
        raise LoragenError(f"cannot {doing} the registry database: {reason}") from None


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """One unit of work: everything inside commits together or not at all."""
    with database_errors(), Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


def lock_store(session: Session, *, exclusive: bool) -> None:
    """Hold the blob store's lock until this session's transaction ends.

    gc takes it exclusive while it decides what is unreferenced and deletes it; every
    transaction that records blob references takes it shared (writers do not wait for
    each other), so gc never deletes a file that a committed row, or one about to
    commit, points at. SQLite: every transaction here is BEGIN IMMEDIATE (see
    _configure_sqlite), which already excludes every other writer, so beginning it is
    the lock. PostgreSQL: a transaction-level advisory lock; taking it again in the same
    transaction (one call per recorded blob) never waits, as a transaction's own locks do
    not conflict, and all of them end with the transaction.
    """
    connection = session.connection()  # begins the transaction now (SQLAlchemy begins lazily)
    dialect = connection.dialect.name
    if dialect == "postgresql":
        function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        connection.exec_driver_sql(f"SELECT {function}({STORE_LOCK_KEY})")
    elif dialect != "sqlite" and exclusive:
        raise LoragenError(f"gc can lock the blob store on SQLite and PostgreSQL only, not {dialect}")
