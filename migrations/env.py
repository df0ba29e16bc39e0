"""Alembic environment for the loragen registry.

loragen calls Alembic from code and passes its connection in
`config.attributes["connection"]`; the `alembic` command line (for writing new
revisions) uses LORAGEN_DATABASE_URL or sqlite:///registry-dev.db.
"""

import os

from alembic import context
from sqlalchemy import create_engine

from loragen.registry.models import Base

target_metadata = Base.metadata


def run_with(connection) -> None:  # noqa: ANN001
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite can't ALTER most things
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run_with(connection)
else:
    engine = create_engine(os.environ.get("LORAGEN_DATABASE_URL", "sqlite:///registry-dev.db"))
    with engine.connect() as conn:
        run_with(conn)
