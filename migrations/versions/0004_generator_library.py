"""generator libraries: the registered adapters a generator's output blends, in order, with their weights digests

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 17:30:00.000000
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: Union[str, None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # Generators registered before this revision keep no rows here: their library is empty.
    op.create_table('generator_library',
    sa.Column('generator_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('adapter_uid', sa.String(length=64), nullable=False),
    sa.Column('task', sa.String(length=200), nullable=False),
    sa.Column('base', sa.String(length=300), nullable=False),
    sa.Column('weights_sha256', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['generator_id'], ['generator_checkpoints.id'],
                            name=op.f('fk_generator_library_generator_id_generator_checkpoints'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('generator_id', 'position', name=op.f('pk_generator_library')),
    sa.UniqueConstraint('generator_id', 'adapter_uid', name=op.f('uq_generator_library_generator_id'))
    )
    op.create_index(op.f('ix_generator_library_adapter_uid'), 'generator_library', ['adapter_uid'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_generator_library_adapter_uid'), table_name='generator_library')
    op.drop_table('generator_library')
