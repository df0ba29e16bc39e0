"""initial schema: bases, versions, tasks, adapters, blobs, eval results

Revision ID: 0001
Revises: 
Create Date: 2026-11-25 07:41:26.366987
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0001'
down_revision: Union[str, None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('base_models',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('architecture', sa.String(length=100), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_base_models')),
    sa.UniqueConstraint('name', name=op.f('uq_base_models_name'))
    )
    op.create_table('blobs',
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('media_type', sa.String(length=100), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('sha256', name=op.f('pk_blobs'))
    )
    op.create_table('tasks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tasks')),
    sa.UniqueConstraint('name', name=op.f('uq_tasks_name'))
    )
    op.create_table('base_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('base_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('parent_id', sa.Integer(), nullable=True),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('gguf_file', sa.String(length=300), nullable=True),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('linear_shapes', sa.JSON(), nullable=False),
    sa.Column('weights_digest', sa.String(length=64), nullable=False),
    sa.Column('num_parameters', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['base_id'], ['base_models.id'], name=op.f('fk_base_versions_base_id_base_models'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['parent_id'], ['base_versions.id'], name=op.f('fk_base_versions_parent_id_base_versions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_base_versions')),
    sa.UniqueConstraint('base_id', 'version', name=op.f('uq_base_versions_base_id'))
    )
    op.create_table('task_descriptions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('task_id', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_task_descriptions_task_id_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_task_descriptions')),
    sa.UniqueConstraint('task_id', 'text', name=op.f('uq_task_descriptions_task_id'))
    )
    op.create_table('adapters',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('uid', sa.String(length=64), nullable=False),
    sa.Column('task_id', sa.Integer(), nullable=False),
    sa.Column('base_version_id', sa.Integer(), nullable=False),
    sa.Column('origin', sa.Enum('trained', 'ingested', 'generated', name='origin', native_enum=False, length=20), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('alpha', sa.Float(), nullable=False),
    sa.Column('target_modules', sa.JSON(), nullable=False),
    sa.Column('num_parameters', sa.BigInteger(), nullable=False),
    sa.Column('weights_sha256', sa.String(length=64), nullable=False),
    sa.Column('config_sha256', sa.String(length=64), nullable=False),
    sa.Column('provenance', sa.JSON(), nullable=False),
    sa.Column('replaces_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['base_version_id'], ['base_versions.id'], name=op.f('fk_adapters_base_version_id_base_versions')),
    sa.ForeignKeyConstraint(['config_sha256'], ['blobs.sha256'], name=op.f('fk_adapters_config_sha256_blobs')),
    sa.ForeignKeyConstraint(['replaces_id'], ['adapters.id'], name=op.f('fk_adapters_replaces_id_adapters')),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_adapters_task_id_tasks')),
    sa.ForeignKeyConstraint(['weights_sha256'], ['blobs.sha256'], name=op.f('fk_adapters_weights_sha256_blobs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_adapters')),
    sa.UniqueConstraint('uid', name=op.f('uq_adapters_uid'))
    )
    op.create_table('base_version_files',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('path', sa.String(length=500), nullable=False),
    sa.Column('blob_sha256', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['blob_sha256'], ['blobs.sha256'], name=op.f('fk_base_version_files_blob_sha256_blobs')),
    sa.ForeignKeyConstraint(['version_id'], ['base_versions.id'], name=op.f('fk_base_version_files_version_id_base_versions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_base_version_files')),
    sa.UniqueConstraint('version_id', 'path', name=op.f('uq_base_version_files_version_id'))
    )
    op.create_table('eval_results',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('adapter_id', sa.Integer(), nullable=True),
    sa.Column('base_version_id', sa.Integer(), nullable=False),
    sa.Column('task_name', sa.String(length=200), nullable=False),
    sa.Column('metric', sa.String(length=100), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.Column('num_examples', sa.Integer(), nullable=False),
    sa.Column('split', sa.String(length=50), nullable=False),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['adapter_id'], ['adapters.id'], name=op.f('fk_eval_results_adapter_id_adapters'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['base_version_id'], ['base_versions.id'], name=op.f('fk_eval_results_base_version_id_base_versions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_eval_results'))
    )


def downgrade() -> None:
    op.drop_table('eval_results')
    op.drop_table('base_version_files')
    op.drop_table('adapters')
    op.drop_table('task_descriptions')
    op.drop_table('base_versions')
    op.drop_table('tasks')
    op.drop_table('blobs')
    op.drop_table('base_models')
