"""feature map: map_x / map_y per feature (UMAP of the decoder directions); runs record the
digest of the trainer's completion stamps behind them (artifacts_digest)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 17:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("features", schema=None) as batch_op:
        batch_op.add_column(sa.Column("map_x", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("map_y", sa.Float(), nullable=True))
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("artifacts_digest", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("artifacts_digest")
    with op.batch_alter_table("features", schema=None) as batch_op:
        batch_op.drop_column("map_y")
        batch_op.drop_column("map_x")
