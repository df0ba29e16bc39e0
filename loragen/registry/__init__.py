"""The registry: SQL metadata (SQLAlchemy + Alembic) beside a content-addressed blob store."""
