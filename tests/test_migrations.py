"""Alembic migrations: create, upgrade from every earlier revision, and match the ORM exactly."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from loragen.registry import db
from loragen.registry.models import Base


def revisions():
    config = Config()
    config.set_main_option("script_location", str(db.migrations_dir()))
    return [r.revision for r in reversed(list(ScriptDirectory.from_config(config).walk_revisions()))]


def test_empty_database_upgrades_to_head(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'r.db'}")
    db.ensure_schema(engine, tmp_path / "lock")
    assert db.current_revision(engine) == db.head_revision()
    assert {"adapters", "base_versions", "blobs", "eval_results", "tasks"} <= set(inspect(engine).get_table_names())


@pytest.mark.parametrize("start", ["base"] + revisions()[:-1])
def test_database_at_an_earlier_revision_upgrades_to_head(tmp_path, start):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'r.db'}")
    db.upgrade(engine, start)
    db.ensure_schema(engine, tmp_path / "lock")
    assert db.current_revision(engine) == db.head_revision()


def test_migrations_match_the_orm(tmp_path):
    """Autogenerate must find nothing to do: the migrations and the models agree."""
    engine = db.make_engine(f"sqlite:///{tmp_path / 'r.db'}")
    db.upgrade(engine)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_downgrade_to_base_and_back(tmp_path):
    from alembic import command

    engine = db.make_engine(f"sqlite:///{tmp_path / 'r.db'}")
    db.upgrade(engine)
    config = Config()
    config.set_main_option("script_location", str(db.migrations_dir()))
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    assert db.current_revision(engine) is None
    db.upgrade(engine)
    assert db.current_revision(engine) == db.head_revision()


def test_unreachable_database_is_one_clear_error(tmp_path):
    from loragen.errors import LoragenError

    engine = db.make_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'r.db'}")
    with pytest.raises(LoragenError, match="cannot open the registry database"):
        db.ensure_schema(engine, tmp_path / "lock")


def test_rows_written_at_0001_survive_the_upgrade(tmp_path):
    """A registry made by the first release keeps its data when 0002 adds columns and tables."""
    from sqlalchemy import text

    engine = db.make_engine(f"sqlite:///{tmp_path / 'r.db'}")
    db.upgrade(engine, "0001")
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO base_models (id, name, architecture, created_at) "
                                "VALUES (1, 'old', 'llama', '2026-01-01')"))
        connection.execute(text(
            "INSERT INTO base_versions (id, base_id, version, note, source, config, linear_shapes, weights_digest, "
            "num_parameters, created_at) VALUES (1, 1, 1, 'n', 's', '{}', '{}', 'abc', 10, '2026-01-01')"))
    db.ensure_schema(engine, tmp_path / "lock")
    with engine.connect() as connection:
        row = connection.execute(text("SELECT name, embedding FROM base_versions JOIN base_models "
                                      "ON base_models.id = base_versions.base_id")).one()
    assert tuple(row) == ("old", None)
    assert "generator_checkpoints" in inspect(engine).get_table_names()
