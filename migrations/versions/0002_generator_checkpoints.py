"""generator checkpoints and cached base embeddings

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 08:00:47.548002
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: Union[str, None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('generator_checkpoints',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('uid', sa.String(length=64), nullable=False),
    sa.Column('weights_sha256', sa.String(length=64), nullable=False),
    sa.Column('meta_sha256', sa.String(length=64), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('seed', sa.Integer(), nullable=False),
    sa.Column('tasks', sa.JSON(), nullable=False),
    sa.Column('bases', sa.JSON(), nullable=False),
    sa.Column('held_out', sa.JSON(), nullable=False),
    sa.Column('num_adapters', sa.Integer(), nullable=False),
    sa.Column('final_loss', sa.Float(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['meta_sha256'], ['blobs.sha256'], name=op.f('fk_generator_checkpoints_meta_sha256_blobs')),
    sa.ForeignKeyConstraint(['weights_sha256'], ['blobs.sha256'], name=op.f('fk_generator_checkpoints_weights_sha256_blobs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_generator_checkpoints')),
    sa.UniqueConstraint('uid', name=op.f('uq_generator_checkpoints_uid'))
    )
    with op.batch_alter_table('base_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('embedding', sa.JSON(), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('base_versions', schema=None) as batch_op:
        batch_op.drop_column('embedding')

    op.drop_table('generator_checkpoints')
