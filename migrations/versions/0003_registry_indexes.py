"""indexes for a registry of 100k adapters: list filters and order, foreign keys a delete checks

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 20:45:00.000000
"""
from typing import Sequence, Union

from alembic import op

revision: str = '0003'
down_revision: Union[str, None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# (index, table, column): `list --task/--base` filter, `list` order, and the references that
# deleting an adapter (replaces_id, eval_results) or a blob row (gc) has to look up.
INDEXES = [
    ('ix_adapters_task_id', 'adapters', 'task_id'),
    ('ix_adapters_base_version_id', 'adapters', 'base_version_id'),
    ('ix_adapters_created_at', 'adapters', 'created_at'),
    ('ix_adapters_replaces_id', 'adapters', 'replaces_id'),
    ('ix_adapters_weights_sha256', 'adapters', 'weights_sha256'),
    ('ix_adapters_config_sha256', 'adapters', 'config_sha256'),
    ('ix_eval_results_adapter_id', 'eval_results', 'adapter_id'),
]


def upgrade() -> None:
    for name, table, column in INDEXES:
        op.create_index(op.f(name), table, [column], unique=False)


def downgrade() -> None:
    for name, table, _ in reversed(INDEXES):
        op.drop_index(op.f(name), table_name=table)
