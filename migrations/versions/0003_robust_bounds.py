"""robust aggregation: each update's delta norm, each round's fixed bounds

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 18:20:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('rounds') as batch:
        batch.add_column(sa.Column(
            'bounds', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True))
    with op.batch_alter_table('updates') as batch:
        batch.add_column(sa.Column('delta_norm', sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('updates') as batch:
        batch.drop_column('delta_norm')
    with op.batch_alter_table('rounds') as batch:
        batch.drop_column('bounds')
