"""secure aggregation: each secure round's stage and state, and the stage messages

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-12 10:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.create_table(
        'secagg_rounds',
        sa.Column('round_id', sa.Integer(), sa.ForeignKey('rounds.id', ondelete='CASCADE'), primary_key=True),
        sa.Column('stage', sa.String(length=16), nullable=False),
        sa.Column('stage_deadline_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('state', _JSON, nullable=True),
        sa.Column('metrics', _JSON, nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        'secagg_messages',
        sa.Column('id', sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column('round_id', sa.Integer(), sa.ForeignKey('rounds.id', ondelete='CASCADE'), nullable=False),
        sa.Column('stage', sa.String(length=16), nullable=False),
        sa.Column('device_id', sa.Uuid(), sa.ForeignKey('devices.id', ondelete='CASCADE'), nullable=False),
        sa.Column('body', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint('round_id', 'stage', 'device_id', name='uq_secagg_messages_round_stage_device'),
    )
    op.create_index('ix_secagg_messages_round_id', 'secagg_messages', ['round_id'])


def downgrade() -> None:
    op.drop_index('ix_secagg_messages_round_id', table_name='secagg_messages')
    op.drop_table('secagg_messages')
    op.drop_table('secagg_rounds')
