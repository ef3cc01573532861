"""length-adjusted GO: p_length / q_length per test, n_go_hits_length per feature

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 13:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("go_enrichments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("p_length", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("q_length", sa.Float(), nullable=True))
    with op.batch_alter_table("features", schema=None) as batch_op:
        batch_op.add_column(sa.Column("n_go_hits_length", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("features", schema=None) as batch_op:
        batch_op.drop_column("n_go_hits_length")
    with op.batch_alter_table("go_enrichments", schema=None) as batch_op:
        batch_op.drop_column("q_length")
        batch_op.drop_column("p_length")
