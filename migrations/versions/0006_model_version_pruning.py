"""model version retention (when a version's weights were released); indexes for paging devices

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 19:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import storage.db

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('model_versions') as batch:
        batch.add_column(sa.Column('pruned_at', storage.db.UTCDateTime(timezone=True), nullable=True))
    op.create_index('ix_devices_created_at_id', 'devices', ['created_at', 'id'])
    op.create_index('ix_assignments_device_id', 'assignments', ['device_id'])
    op.create_index('ix_updates_device_id', 'updates', ['device_id'])


def downgrade() -> None:
    op.drop_index('ix_updates_device_id', table_name='updates')
    op.drop_index('ix_assignments_device_id', table_name='assignments')
    op.drop_index('ix_devices_created_at_id', table_name='devices')
    with op.batch_alter_table('model_versions') as batch:
        batch.drop_column('pruned_at')
