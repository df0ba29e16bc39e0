"""base versions record the terms their weights come under (a bundled model's licence, kept by evolved versions)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 09:40:00.000000
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: Union[str, None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # Versions registered before this revision have no recorded licence (NULL): none of their sources declared one.
    with op.batch_alter_table('base_versions') as batch:
        batch.add_column(sa.Column('licence', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('base_versions') as batch:
        batch.drop_column('licence')
